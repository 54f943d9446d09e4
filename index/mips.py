"""Inner-product search as nearest-neighbour search: the Euclidean transform of Bachrach et al. (2014,
"Speeding up the Xbox recommender system using a Euclidean transformation for inner-product spaces").

Each row x gets one more coordinate, sqrt(M - |x|^2) with M the largest |x|^2, so that every row has
norm sqrt(M); a query q gets a 0 there. Then |q' - x'|^2 = |q|^2 + M - 2 q . x: the nearest rows are
the rows of largest inner product, exactly. Approximate indexes cluster and walk by distance: over
the raw rows, whose norms differ (a tag's bias b_t folded in as a coordinate spreads them widely),
inner-product k-means gives cells that a query must probe by the hundreds; over the transformed rows
an IVF index finds the same top-k probing a few (docs/serving.md, "Search").
"""

from __future__ import annotations

import numpy as np

# rows transformed per step: no full-table float64 temporaries
CHUNK = 65_536


def transform_rows(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(x with the extra coordinate (n, d + 1) float32, M = max |x|^2)."""
    x = np.asarray(x, np.float32)
    sq = np.empty(len(x), np.float64)
    for lo in range(0, len(x), CHUNK):
        part = x[lo : lo + CHUNK].astype(np.float64)
        sq[lo : lo + len(part)] = np.einsum("ij,ij->i", part, part)
    top = float(sq.max()) if len(sq) else 0.0
    out = np.empty((len(x), x.shape[1] + 1), np.float32)
    out[:, :-1] = x
    out[:, -1] = np.sqrt(np.maximum(top - sq, 0.0))
    return out, top


def transform_queries(q: np.ndarray) -> np.ndarray:
    """The queries with a 0 coordinate appended (B, d + 1)."""
    q = np.asarray(q, np.float32)
    return np.ascontiguousarray(np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1))


def inner_products(q: np.ndarray, distances: np.ndarray, top: float) -> np.ndarray:
    """The inner products q . x of the rows whose squared distances from the transformed queries are
    `distances` (B, k): (|q|^2 + M - d) / 2, within about 1e-7 (|q|^2 + M) of the exact value."""
    qq = np.einsum("ij,ij->i", q.astype(np.float64), q.astype(np.float64))[:, None]
    return ((qq + top - distances.astype(np.float64)) / 2.0).astype(np.float32)
