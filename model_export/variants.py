"""Optional reduced-precision copies of the exported tower: fp16 weights, int8 dynamic quantisation.

Both keep float32 inputs and outputs, so a caller swaps the file and nothing else. Neither is
checked against a tolerance at export (they are expected to differ from float32 by more than
1e-4); instead their top-50 agreement with the float32 model is measured on the parity cases and
recorded in the manifest, so whoever serves one knows what it costs. Needs the `onnx` package
(export side only).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

VARIANTS = ("fp16", "int8")

log = logging.getLogger(__name__)


def make_fp16(src: Path, dst: Path) -> None:
    """Weights and activations in float16, inputs and outputs kept float32.

    Constants beyond the float16 range (the masked softmax's float32 minimum) are clipped to
    +-65504 by the converter, which keeps empty fields at zero weight rather than NaN.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def make_int8(src: Path, dst: Path) -> None:
    """Dynamic quantisation: int8 weights (MatMul, embedding Gather), activations quantised per batch.

    The model is pre-processed first (shape inference, graph optimisation), as ONNX Runtime's
    quantiser recommends; if that step fails the raw export is quantised directly.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(src), str(prepared))
        except Exception as e:  # the pre-processing is an optimisation; any failure falls back
            log.info("quantisation pre-processing failed (%s); quantising the raw export", e)
            prepared = src
        quantize_dynamic(prepared, dst, weight_type=QuantType.QInt8)


def make_variant(variant: str, src: Path, dst: Path) -> None:
    """Write variant `variant` ("fp16" | "int8") of the float32 model `src` to `dst`."""
    if variant == "fp16":
        make_fp16(src, dst)
    elif variant == "int8":
        make_int8(src, dst)
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
