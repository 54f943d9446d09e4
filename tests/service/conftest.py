"""Fixtures of the deployment tests: the interpreter of the serving image's packages, utpm's wheel."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.image import tracked_copy, venv_over


@pytest.fixture(scope="session")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image venv's python (UTPM_IMAGE_PYTHON), or a venv that sees the dev venv's packages
    through a path entry: the project's own editable install is not on it (its .pth is not read)."""
    given = os.environ.get("UTPM_IMAGE_PYTHON")
    if given:
        return Path(given).absolute()
    (purelib,) = {p for p in site.getsitepackages() if p.endswith("site-packages")}
    return venv_over(purelib, tmp_path_factory.mktemp("image-venv"), sys.executable)


@pytest.fixture(scope="session")
def utpm_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """utpm's wheel, built as `pip wheel .` would from a clean checkout (a copy of the tracked files)."""
    base = tmp_path_factory.mktemp("wheel")
    src = tracked_copy(base / "src")
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(base)]
    subprocess.run([*pip, str(src)], check=True, capture_output=True)
    (wheel,) = base.glob("utpm-*.whl")
    return wheel
