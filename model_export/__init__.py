"""ONNX export of the user tower and the versioned bundle it ships in.

Serving side (torch-free): `load_bundle` -> `Bundle` (encoder, tag vocabulary, memory-mapped tag
embeddings, ONNX path, manifest); `build_session` builds the ONNX Runtime session.
Export side (needs torch, imported on first use): `export_bundle(run_dir, out)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_export.bundle import Bundle, load_bundle
from model_export.errors import BundleError, ExportError, ParityError
from model_export.manifest import METRIC, Manifest
from model_export.session import SessionConfig, build_session

if TYPE_CHECKING:
    from model_export.onnx_export import export_bundle

__all__ = [
    "METRIC",
    "Bundle",
    "BundleError",
    "ExportError",
    "Manifest",
    "ParityError",
    "SessionConfig",
    "build_session",
    "export_bundle",
    "load_bundle",
]


def __getattr__(name: str) -> Any:
    # `export_bundle` pulls in torch: import it only when asked for, so the service never does.
    if name == "export_bundle":
        from model_export.onnx_export import export_bundle

        return export_bundle
    raise AttributeError(f"module 'model_export' has no attribute {name!r}")
