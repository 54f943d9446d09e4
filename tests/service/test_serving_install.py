"""A serving install (`pip install utpm[serve]`: the base and serve dependencies, no train, batch or
dev extra) runs the `utpm` command: `serve` and `index build` work, and a command that needs an
extra's module says which extra to install, in one line. The packages are the serving lock's
(UTPM_IMAGE_PYTHON, which `make test` builds from requirements/serve.lock); utpm itself is
installed into a venv on top of them from its wheel, as a user's pip would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mirakuru import HTTPExecutor

from tests.conftest import free_port
from tests.service.image import REPO, venv_over
from tests.serving import USER


@pytest.fixture(scope="module")
def utpm_command(image_python: Path, utpm_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`utpm` of a venv that sees only the serving lock's packages, utpm installed from its wheel."""
    if not os.environ.get("UTPM_IMAGE_PYTHON"):
        pytest.skip("needs the serving lock's venv in UTPM_IMAGE_PYTHON (make test builds .venv-image)")
    base = tmp_path_factory.mktemp("serving-install")
    purelib = subprocess.run(
        [str(image_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    python = venv_over(purelib, base / "venv", image_python)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    subprocess.run([*pip, "--no-deps", str(utpm_wheel)], check=True, capture_output=True)
    return python.parent / "utpm"


def test_a_serving_install_serves_and_names_the_extra_a_command_needs(
    utpm_command: Path, hist_bundle: Path, tmp_path: Path
) -> None:
    done = subprocess.run([str(utpm_command), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "serve" in done.stdout, done.stderr[-2000:]

    bundle = Path(shutil.copytree(hist_bundle, tmp_path / "bundle"))
    done = subprocess.run([str(utpm_command), "index", "build", str(bundle)], capture_output=True, text=True)
    assert done.returncode == 0 and "wrote" in done.stdout, done.stdout[-1000:] + done.stderr[-2000:]

    port = free_port()
    server = HTTPExecutor(
        [str(utpm_command), "serve", str(bundle), "--port", str(port)],
        url=f"http://127.0.0.1:{port}/healthz",
        status=200,
        method="GET",
        timeout=120,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    with server:
        r = httpx.post(f"http://127.0.0.1:{port}/profile", json={"user_id": "install", "features": USER, "k": 3})
        assert r.status_code == 200 and len(r.json()["tags"]) == 3, r.text

    # data preparation needs pandas, export torch: both come with the train extra
    for command, module in (
        (["prepare", "movielens", str(REPO / "data" / "movielens-small"), "ml"], "pandas"),
        (["export", "run", "--out", "bundle-out"], "torch"),
    ):
        done = subprocess.run([str(utpm_command), *command], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.strip().splitlines() == [
            f"error: this command needs {module}, which is not installed: pip install 'utpm[train]'"
        ], done.stderr
