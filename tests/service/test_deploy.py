"""The deployment kit without Docker: the compose file, the Dockerfile's targets, the lock files,
the build context and the Grafana dashboard agree with the code and its settings."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.config import RETIRED, Settings
from service.main import create_app
from tests.service.image import REPO, stages
from tests.serving import settings_for

SETTINGS = {f"UTPM_{name.upper()}" for name in Settings.model_fields}


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~!; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def _pinned(lock: Path) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M)}


def test_compose_starts_the_service_with_redis_and_consistent_settings() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"utpm", "redis", "prometheus", "grafana"} <= set(services)
    utpm = services["utpm"]
    assert utpm["build"]["target"] in stages((REPO / "Dockerfile").read_text())
    assert "8000:8000" in utpm["ports"]
    env = utpm["environment"]
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    assert not set(env) & set(RETIRED)
    assert env["UTPM_REDIS_URL"].startswith("redis://redis:") and env["UTPM_BUNDLE"] == "/bundle"
    assert any(v.endswith(":/bundle:ro") for v in utpm["volumes"])
    assert "redis" in utpm["depends_on"]
    for optional in ("prometheus", "grafana"):
        assert services[optional]["profiles"] == ["monitoring"]  # `docker compose up` starts only utpm + redis
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["utpm:8000"]
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (REPO / volume.split(":")[0]).exists(), volume


def test_dockerfile_targets_ship_only_the_serving_code_from_the_locks() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    by_name = stages(dockerfile)
    assert list(by_name)[-1] == "serve"  # the default target is the CPU image
    assert by_name["serve-gpu"].startswith("FROM nvidia/cuda:") and "cudnn" in by_name["serve-gpu"].split()[1]
    for target, lock in (("serve", "requirements/serve.lock"), ("serve-gpu", "requirements/serve-gpu.lock")):
        text = by_name[target] if target == "serve-gpu" else by_name["deps"]
        assert f"COPY {lock}" in text and "--require-hashes" in text, target
        runtime = by_name[target]
        users = [line.split()[1] for line in runtime.splitlines() if line.startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), target
        assert "HEALTHCHECK" in runtime and "/healthz" in runtime, target
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line]
    for path in copied:
        assert not path.startswith(("loadtest", "utpm_cli", "pipeline", "batch", "tests", "utpm/training")), path
        assert not path.startswith(("utpm/models", "utpm/evaluation", "artifacts", "data")), path
        assert path.startswith("${BUNDLE") or (REPO / path).exists(), path
    assert "UTPM_DEVICE=cpu" in by_name["serve"] and "UTPM_DEVICE=auto" in by_name["serve-gpu"]


def test_dockerignore_keeps_artifacts_and_runs_out_of_the_context() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*"  # an allowlist: everything not named below stays out
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert not allowed & {"artifacts", "runs", "data", "loadtest", "tests", ".venv", "utpm", "utpm/training"}
    copied = {line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    for path in copied - {"${BUNDLE:-requirements}"}:
        if "--from" in path or path.startswith("--"):
            continue
        assert any(path == a or path.startswith(a + "/") for a in allowed), path


def test_lock_files_pin_every_serving_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = _requirement_names(project["dependencies"] + extras["serve"] + extras["otel"])
    lock = REPO / "requirements" / "serve.lock"
    pinned = _pinned(lock)
    assert wanted <= set(pinned), wanted - set(pinned)
    assert not {"torch", "pandas", "locust", "onnxruntime-gpu"} & set(pinned)
    assert lock.read_text().count("--hash=sha256:") >= len(pinned)
    gpu_in = [ln.strip() for ln in (REPO / "requirements" / "serve-gpu.in").read_text().splitlines()]
    gpu_wanted = _requirement_names([ln for ln in gpu_in if ln and not ln.startswith("#")])
    cpu_builds = {"onnxruntime", "faiss-cpu"}
    assert gpu_wanted == (wanted - cpu_builds) | _requirement_names(extras["gpu"])
    gpu_lock = REPO / "requirements" / "serve-gpu.lock"
    if not gpu_lock.exists():
        pytest.skip("requirements/serve-gpu.lock not generated")
    gpu_pinned = _pinned(gpu_lock)
    assert gpu_wanted <= set(gpu_pinned) and not cpu_builds & set(gpu_pinned)


@pytest.fixture()
def metrics_text(bundles: dict[str, Path]) -> Iterator[str]:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        yield c.get("/metrics").text


def test_grafana_dashboard_plots_only_metrics_the_service_exports(metrics_text: str) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "utpm.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"\b(?:utpm|process)_\w+", e)}
    assert len(names) >= 12
    for name in names:
        assert name in metrics_text, name


def test_serving_docs_document_every_setting_and_every_retired_one() -> None:
    docs = (REPO / "docs" / "serving.md").read_text()
    table = docs.split("## Settings", 1)[1].split("\n## ", 1)[0]
    for name in sorted(SETTINGS):
        assert f"`{name}`" in table, f"{name} is not documented in docs/serving.md, Settings"
    for name in RETIRED:
        assert f"`{name}`" in table, f"{name} is missing from the old -> new table"
    problems = docs.split("## Errors", 1)[1].split("\n## ", 1)[0]
    from service.errors import TITLES

    for kind in TITLES:
        assert f"urn:utpm:problem:{kind}" in problems, kind


def test_the_wheel_ships_the_files_the_code_opens(utpm_wheel: Path) -> None:
    """A non-editable install (`pip install .`, a wheel) must hold the non-Python files the packages
    open at run time (the explorer's page, wrk's scripts); shell scripts are run from a checkout."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    roots = tuple(p.rstrip("*") + "/" for p in packages)
    wanted = {f for f in tracked if f.startswith(roots) and not f.endswith((".py", ".sh"))}
    assert wanted, "no data files found: the test would prove nothing"
    shipped = set(zipfile.ZipFile(utpm_wheel).namelist())
    assert wanted <= shipped, wanted - shipped


# Imported modules whose distribution has another name, and modules a declared package always brings.
DIST_OF_MODULE = {"faiss": "faiss-cpu", "yaml": "pyyaml", "opentelemetry": "opentelemetry-sdk"}
BROUGHT_BY = {"pydantic": "fastapi", "pydantic_core": "fastapi", "starlette": "fastapi", "uvloop": "uvicorn"}


def test_every_third_party_module_the_packages_import_is_declared() -> None:
    """Each module the packages import is pyproject's (base or an extra), so that a missing one gets
    the one-line `pip install 'utpm[EXTRA]'` error (utpm_cli.errors.missing_extra), not a traceback."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"].values()
    declared = _requirement_names([*project["project"]["dependencies"], *(r for extra in extras for r in extra)])
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    undeclared: dict[str, str] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.partition(".")[0] for n in names}:
                    if top in sys.stdlib_module_names or top in packages or top == "__future__":
                        continue
                    dist = DIST_OF_MODULE.get(top, top).lower().replace("_", "-")
                    if dist not in declared and BROUGHT_BY.get(top) not in declared:
                        undeclared.setdefault(top, path.relative_to(REPO).as_posix())
    assert not undeclared, f"imported but not in pyproject (module: first file): {undeclared}"
