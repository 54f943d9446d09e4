"""The serving path must never import torch (the serving image has no torch)."""

import subprocess
import sys

import pytest

TORCH_FREE_MODULES = ["utpm", "utpm.data", "utpm.data.protocol", "utpm.data.movielens", "utpm.features"]


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)
