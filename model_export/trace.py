"""Tracing a torch module to ONNX: the one call both exports (the tower, the default model's scorer) make."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


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
    """`wrapper` (which calls `model`) traced to `path` with `model` in eval mode, its mode restored after."""
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
