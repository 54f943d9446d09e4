"""Tracing a torch module to ONNX: the one call both exports (the tower, the default model's scorer) make."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from model_export.errors import ExportError

MIN_OPSET = 17  # the oldest opset the exports (and their parity gates) have been run with


def max_opset() -> int:
    """The highest opset torch's TorchScript exporter (the one used here, `dynamo=False`) writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", MIN_OPSET))


def trace_onnx(
    model: nn.Module,
    wrapper: nn.Module,
    example: list[Tensor],
    path: Path,
    names_in: list[str],
    names_out: list[str],
    axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """`wrapper` (which calls `model`) traced to `path` with `model` in eval mode, its mode restored after;
    ExportError for an opset the exporter cannot write."""
    if not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"opset must be between {MIN_OPSET} and {max_opset()} (this torch's exporter), got {opset}")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The legacy-exporter deprecation notice and the tracer's note on the shape check in
            # AttentionUnit.scores (a constant for a given model) are expected and harmless.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                tuple(example),
                str(path),
                input_names=names_in,
                output_names=names_out,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
