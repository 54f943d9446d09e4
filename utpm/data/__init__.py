"""The data layer: the generic input format, its validating loader, converters and the paper's protocol.

Torch-free. `load_dataset` reads a directory in the generic format (docs/data-format.md);
`prepare_movielens` and `generate_synthetic` write one; `split_protocol` applies section 4.1 of
the paper.
"""

from utpm.data.errors import DataError, LoadReport
from utpm.data.loading import Dataset, load_dataset

__all__ = ["DataError", "Dataset", "LoadReport", "load_dataset"]
