"""A copy of the test suite's tiny bundle for each index test, which writes its index into it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst
