"""Lookups in sorted integer keys and ranks within rows, for codes row * n + value (numpy only)."""

from __future__ import annotations

import numpy as np


def find_sorted(sorted_keys: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each of `codes` is or would be in `sorted_keys`, clipped to it; whether it is there),
    both shaped like `codes`."""
    if not len(sorted_keys):
        return np.zeros(np.shape(codes), np.int64), np.zeros(np.shape(codes), bool)
    at = np.minimum(np.searchsorted(sorted_keys, codes), len(sorted_keys) - 1)
    return at, sorted_keys[at] == codes


def rank_in_row(rows: np.ndarray, per_row: np.ndarray) -> np.ndarray:
    """The rank of each element among those of its row: `rows` sorted, `per_row` their bincount."""
    start = np.zeros(len(per_row), np.int64)
    np.cumsum(per_row[:-1], out=start[1:])
    return np.arange(len(rows)) - start[rows]
