"""The data layer: the generic input format, its validating loader, converters and the paper's protocol.

Torch-free. `load_dataset` reads a directory in the generic format (docs/data-format.md);
`prepare_movielens` and `generate_synthetic` write one; `split_protocol` applies section 4.1 of
the paper. pandas is imported on first use of the loader, so `DataError` is importable from a
serving install without the data extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from utpm.data.errors import DataError, LoadReport

if TYPE_CHECKING:
    from utpm.data.loading import Dataset, load_dataset

__all__ = ["DataError", "Dataset", "LoadReport", "load_dataset"]


def __getattr__(name: str) -> Any:
    if name in ("Dataset", "load_dataset"):
        from utpm.data import loading

        return getattr(loading, name)
    raise AttributeError(name)
