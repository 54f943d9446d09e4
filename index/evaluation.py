"""Recall of an index against exact inner-product search (faiss contrib `knn_intersection_measure`)."""

from __future__ import annotations

import numpy as np


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k  intersect  exact top-k| / k.

    exact_ids, approx_ids: (B, >= k) int ids, best first; -1 (no result) never counts as a hit.
    Order within the top k does not matter. k larger than the columns given is an error.
    """
    exact_ids, approx_ids = np.asarray(exact_ids), np.asarray(approx_ids)
    if exact_ids.shape[0] != approx_ids.shape[0]:
        raise ValueError(f"{exact_ids.shape[0]} exact rows vs {approx_ids.shape[0]} approximate rows")
    if k < 1 or k > exact_ids.shape[1] or k > approx_ids.shape[1]:
        raise ValueError(f"k={k} outside 1..{min(exact_ids.shape[1], approx_ids.shape[1])}")
    if len(exact_ids) == 0:
        return 1.0
    hits = 0
    for e, a in zip(exact_ids[:, :k], approx_ids[:, :k], strict=True):
        hits += len(np.intersect1d(e[e >= 0], a[a >= 0], assume_unique=False))
    return hits / (k * len(exact_ids))
