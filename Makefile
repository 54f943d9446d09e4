# Two set-up commands: `make demo` (the main job) and `make test` (what CI runs).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= artifacts/demo

.PHONY: demo test lint typecheck install redis clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: this machine carries a CPU build of 2.13.0 on disk; an unpinned torch
# would pull a multi-GB CUDA build. The pyproject range admits 2.13.0, so nothing more is fetched.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# Tests of caching talk to a real redis-server; install Debian's package when we can.
redis:
	@if command -v redis-server >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing redis-server (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	else \
		echo "error: redis-server is missing. Install it first, e.g. 'sudo apt-get install redis-server'" \
		     "(Debian/Ubuntu) or 'brew install redis' (macOS), then run make test again." >&2; exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) redis lint typecheck
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/utpm demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
