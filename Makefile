# Two set-up commands: `make demo` (the main job) and `make test` (what CI runs).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU image's packages, installed from its lock as the Dockerfile does: tests/service/test_image.py
# runs the image's code and command on them (no Docker engine on the development machines).
IMAGE_VENV ?= .venv-image
IMAGE_STAMP := $(IMAGE_VENV)/.installed
DEMO_DIR ?= artifacts/demo

.PHONY: demo test lint typecheck install system-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: this machine carries a CPU build of 2.13.0 on disk; an unpinned torch
# would pull a multi-GB CUDA build. The pyproject range admits 2.13.0, so nothing more is fetched.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,serve,dev,batch]'
	touch $(STAMP)

install: $(STAMP)

$(IMAGE_STAMP): requirements/serve.lock
	rm -rf $(IMAGE_VENV) && $(PY) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/pip install --quiet --no-cache-dir --require-hashes -r requirements/serve.lock
	touch $(IMAGE_STAMP)

# Tests talk to a real redis-server (and redis-cli for the cluster test), generate a TLS
# certificate with openssl, and the smoke load run cross-checks with wrk: Debian packages,
# installed when missing and we can (root + apt-get). The explorer's browser test drives Debian's
# chromium through Playwright (its own browser download is not used).
SYSTEM_TOOLS := redis-server:redis-server redis-cli:redis-tools wrk:wrk openssl:openssl chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "error: missing$$missing. Install them first, e.g. 'sudo apt-get install$$missing'" \
		     "(Debian/Ubuntu; on macOS 'brew install redis wrk openssl'), then run make test again." >&2; exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(IMAGE_STAMP) system-deps lint typecheck
	UTPM_IMAGE_PYTHON=$(IMAGE_VENV)/bin/python $(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/utpm demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(IMAGE_VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
