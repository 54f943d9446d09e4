"""Helpers shared by the export and reliability tests for damaging a bundle on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def perturb_onnx(src: Path, dst: Path, delta: float = 0.5) -> None:
    """Copy an ONNX model, adding `delta` to every value of its largest float initializer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    target = max(floats, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(target) + np.float32(delta)
    target.CopyFrom(numpy_helper.from_array(values.astype(np.float32), target.name))
    onnx.save(model, str(dst))
