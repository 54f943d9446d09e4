"""The serving path must never import torch (the serving image has no torch)."""

import subprocess
import sys

import pytest

TORCH_FREE_MODULES = [
    "utpm",
    "utpm.data",
    "utpm.data.protocol",
    "utpm.data.movielens",
    "utpm.features",
    "model_export",
    "model_export.bundle",
    "model_export.session",
    "index",
    "index.tag_index",
    "service.main",
    "service.engine",
]


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serving_image_needs_no_pandas() -> None:
    """The Docker image installs only the serve extra: the app's modules must not need pandas either."""
    code = "import sys, service.main, index.tag_index, model_export.bundle; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
