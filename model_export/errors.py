"""The errors of export and bundle loading: domain errors the CLI turns into one `error: ...` line."""

from __future__ import annotations


class BundleError(Exception):
    """A bundle is missing, corrupt, or inconsistent with itself (hash, dimensions, metric)."""


class ExportError(Exception):
    """An export could not be completed; nothing final was written."""


class ParityError(ExportError):
    """ONNX Runtime does not reproduce PyTorch within the tolerance; the message names the failing case."""
