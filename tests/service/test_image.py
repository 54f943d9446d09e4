"""The serving images' code, checks and command, run without a Docker engine (none runs here).

For each Dockerfile target: the files its COPY lines take from the build context (filtered by
.dockerignore) are laid out in a folder; the RUN lines' `python -c` checks and the CMD then run
there with the stage's ENV, an interpreter that sees only that folder and the dependencies, and a
real bundle and redis-server (the serve target with docker-compose.yml's environment for its
service, fleet sync off as in every test sharing the redis-server); the HEALTHCHECK command must
pass against it. `make test` points
UTPM_IMAGE_PYTHON at a venv installed from requirements/serve.lock with --require-hashes, as the
CPU image's is; without it the dependencies are the dev venv's (the code is still only the image's).
The serve-gpu target runs on those CPU packages: its code, settings and commands, not its CUDA wheels.
The lock itself must hold what its packages need on every CPython 3.11 release.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from mirakuru import HTTPExecutor
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import RedisServer, free_port
from tests.service.image import (
    REPO,
    DockerIgnore,
    build_context,
    cmd_of,
    copy_from_context,
    copy_stage,
    env_of,
    expand,
    healthcheck_of,
    instructions,
    python_checks,
    stages,
    tracked_copy,
)
from tests.serving import USER

STAGES = stages((REPO / "Dockerfile").read_text())
LOCK = "requirements/serve.lock"


@pytest.fixture(scope="module")
def app_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/app of both targets: each copies the `code` stage's /app."""
    app = tmp_path_factory.mktemp("image") / "app"
    copied = copy_stage(STAGES["code"], app)
    assert "service/main.py" in copied and not any(f.startswith(("loadtest/", "utpm/training/")) for f in copied)
    return app


def _image_env(stage: str, app: Path, bundle: Path, python: Path, **extra: str) -> dict[str, str]:
    """The stage's ENV with its /app and /bundle at the test's folders, the interpreter first on PATH."""
    env = {k: v.replace("/app", str(app)).replace("/bundle", str(bundle)) for k, v in env_of(stage).items()}
    env["PATH"] = f"{python.parent}{os.pathsep}{os.environ['PATH']}"
    return {**env, **extra}


def _compose_env(target: str, bundle: Path, redis_url: str) -> dict[str, str]:
    """docker-compose.yml's environment for the service built from `target` (its defaults for unset
    shell variables, its Redis and bundle at the test's), or the Redis URL alone for another target."""
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["utpm"]
    env = {"UTPM_REDIS_URL": redis_url, "UTPM_FLEET_SYNC": "false"}
    if service["build"]["target"] != target:
        return env
    compose = {k: expand(str(v), {}) for k, v in service["environment"].items()}  # the shell's variables unset
    compose["UTPM_BUNDLE"] = compose["UTPM_BUNDLE"].replace("/bundle", str(bundle))
    return {**compose, **env}


def _command(words: list[str], python: Path, port: int | None = None) -> list[str]:
    """A Dockerfile command for this interpreter: `python` is it, a console script its `-m` form;
    the container's port 8000 (in flags and URLs) the test's, its 0.0.0.0 the loopback."""
    head = [str(python)] if words[0] == "python" else [str(python), "-m", words[0]]
    rest = words[1:]
    if port is not None:
        rest = [str(port) if w == "8000" else w.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for w in rest]
        rest = ["127.0.0.1" if w == "0.0.0.0" else w for w in rest]
    return head + rest


_REQUIRES = """
import importlib.metadata as m, json
print(json.dumps({d.metadata["Name"]: d.requires or [] for d in m.distributions()}))
"""


def test_the_cpu_lock_holds_what_every_python_3_11_release_needs(image_python: Path) -> None:
    """The lock's packages' own requirements, for CPython 3.11.0 to 3.11.14 (their markers; extras
    aside): each is pinned. pip-compile pins only what its own interpreter needs, and redis needs
    async-timeout before 3.11.3, Debian 12's python3 being 3.11.2 (docs/serving.md, "Docker")."""
    lock = (REPO / LOCK).read_text()
    pinned = {canonicalize_name(name) for name in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    listed = subprocess.run([str(image_python), "-c", _REQUIRES], capture_output=True, text=True, check=True).stdout
    requires = {canonicalize_name(name): reqs for name, reqs in json.loads(listed).items()}
    installed = pinned & set(requires)  # the dev venv's fallback may lack a pin its Python does not need
    assert {"redis", "fastapi", "onnxruntime"} <= installed, installed
    missing: set[str] = set()
    for name in installed:
        for line in requires[name]:
            req = Requirement(line)
            if req.marker is not None and "extra" in str(req.marker):
                continue
            for patch in range(15):
                env = {"python_full_version": f"3.11.{patch}", "python_version": "3.11", "extra": ""}
                if req.marker is None or req.marker.evaluate(env):
                    if canonicalize_name(req.name) not in pinned:
                        missing.add(f"{req.name} (for {name} on 3.11.{patch})")
                    break
    assert not missing, f"{LOCK} lacks {sorted(missing)}"


def test_dockerignore_rules_follow_docker() -> None:
    ignore = DockerIgnore.read(REPO / ".dockerignore")
    assert ignore.excludes("loadtest/serve.py") and ignore.excludes("utpm/training/history.py")
    assert not ignore.excludes("service/main.py") and not ignore.excludes("utpm/features/history.py")
    assert ignore.excludes("service/__pycache__/main.cpython-311.pyc")
    assert ignore.excludes("artifacts/demo/bundle/manifest.json") and ignore.excludes(".venv/bin/python")


@pytest.mark.parametrize("target", ["serve", "serve-gpu"])
def test_the_image_checks_and_serves_from_only_what_it_copies(
    target: str, image_python: Path, app_tree: Path, hist_bundle: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    app = app_tree
    stage = STAGES[target]
    # the build's own checks (no torch, no pandas; the history kernel compiled into NUMBA_CACHE_DIR)
    env = _image_env(stage, app, hist_bundle, image_python)
    workdir = tmp_path / "root"  # the runtime stages set no WORKDIR: the code is found through PYTHONPATH
    workdir.mkdir()
    for check in python_checks(stage):
        done = subprocess.run(_command(check, image_python), cwd=workdir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{target}: RUN {' '.join(check)}\n{done.stderr[-3000:]}"
    assert any((app / ".numba").iterdir()), "the history kernel was not cached at build time"

    # what the service may not write at run time: the image's code (root's; the kernel cache included,
    # so that a container starts without compiling) and the bundle (mounted read-only)
    before = _files(app), _files(hist_bundle)
    port = free_port()
    cmd = _command(cmd_of(stage), image_python, port)
    env = _image_env(stage, app, hist_bundle, image_python, **_compose_env(target, hist_bundle, redis_server.url))
    with _serving(cmd, port, env, workdir) as base:
        health = subprocess.run(_command(healthcheck_of(stage), image_python, port), env=env, cwd=workdir)
        assert health.returncode == 0, f"{target}: HEALTHCHECK failed"
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["status"] == "ready" and ready["model"] == "utpm-hist", ready
        assert ready["device"]["execution_provider"] == "CPUExecutionProvider", ready
        user = f"image-{target}"
        r = httpx.post(f"{base}/profile", json={"user_id": user, "features": USER, "k": 5})
        assert r.status_code == 200 and len(r.json()["tags"]) == 5, r.text
        cached = httpx.get(f"{base}/profile/{user}")
        assert cached.status_code == 200 and cached.json()["cached"] is True, cached.text
        explorer = httpx.get(f"{base}/explorer/")  # the page's static files, from the image's tree
        assert explorer.status_code == 200 and "<html" in explorer.text.lower(), explorer.status_code
        assert "utpm_request_seconds" in httpx.get(f"{base}/metrics").text
    assert (_files(app), _files(hist_bundle)) == before, "the service wrote into its code or its bundle"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` but Python's bytecode caches (skipped where they cannot be written):
    its size and modification time."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@contextlib.contextmanager
def _serving(cmd: list[str], port: int, env: dict[str, str], cwd: Path) -> Iterator[str]:
    """The image's CMD supervised by mirakuru until /healthz answers; its log is shown on failure."""
    log = cwd / "server.log"
    with log.open("w") as out:
        executor = HTTPExecutor(
            cmd,
            url=f"http://127.0.0.1:{port}/healthz",
            status=200,
            method="GET",
            timeout=120,
            cwd=str(cwd),
            envvars=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            executor.start()
        except Exception as e:
            raise AssertionError(f"the image's CMD did not serve: {e}\n{log.read_text()[-3000:]}") from None
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            executor.stop()


@pytest.mark.parametrize("baked", [True, False])
def test_a_bundle_baked_in_with_the_build_arg_lands_at_bundle(baked: bool, hist_bundle: Path, tmp_path: Path) -> None:
    """`--build-arg BUNDLE=bundles/NAME` (docs/serving.md, "Docker"): the bundle, which .dockerignore
    lets into the context under bundles/, ends up at /bundle; without the argument /bundle is empty.
    The code stage's COPY and RUN lines for it, with the container's paths at the test's."""
    context = tracked_copy(tmp_path / "context")
    shutil.copytree(hist_bundle, context / "bundles" / "demo")
    args = {"BUNDLE": "bundles/demo"} if baked else {}
    steps = instructions(STAGES["code"])
    ((src, dest),) = [a.split() for op, a in steps if op == "COPY" and a.startswith("${BUNDLE")]
    staged, final = tmp_path / "bundle-src", tmp_path / "bundle"
    copy_from_context(build_context(context), expand(src, args), staged, context)
    (run,) = [a for op, a in steps if op == "RUN" and dest in a]
    script = run.replace(dest, "@STAGED@").replace("/bundle", str(final)).replace("@STAGED@", str(staged))
    subprocess.run(["bash", "-c", script], check=True)
    served = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    wanted = sorted(p.relative_to(hist_bundle).as_posix() for p in hist_bundle.rglob("*") if p.is_file())
    assert served == (wanted if baked else []), served
    assert not staged.exists()
