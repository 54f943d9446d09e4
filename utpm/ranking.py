"""The one tie rule of the default model's rankings: equal scores are ordered by the lower tag id.

Tag ids run in descending frequency of the tag among the training users' events, ties by name
(`Vocabulary.build`), so among equal scores the more frequent tag comes first. Training's
validation, the evaluation, the export's parity cases and both serving searches rank with it, so a
profile does not depend on which code path (or which sort) produced it; the yardsticks break their
ties by the same order (`utpm.evaluation.yardsticks.tag_order`).

Torch-free: numpy only, so the service can use it.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """scores (B, m) -> (B, min(k, m)) column positions, best first, equal scores by the lower id.

    `ids` (B, m) are the tag ids of the columns (candidates gathered from several sources); without
    them a column's position is its id. Exact at the k-th place too: of the columns tied with the
    k-th best score, those of the lowest ids are kept. Only the k best and their ties are sorted.
    Scores must not be NaN.
    """
    scores = np.asarray(scores)
    b, m = scores.shape
    k = max(0, min(k, m))
    if k == 0 or b == 0:
        return np.zeros((b, k), np.int64)
    rows, cols = np.nonzero(scores >= _at_most_kth_best(scores, k))
    tie = cols if ids is None else np.asarray(ids)[rows, cols]
    order = np.lexsort((tie, -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    start = np.zeros(b, np.int64)
    np.cumsum(np.bincount(rows, minlength=b)[:-1], out=start[1:])
    return cols[(np.arange(len(rows)) - start[rows]) < k].reshape(b, k).astype(np.int64)


# Rows at least this wide find a bound from block maxima rather than partitioning the whole row.
BLOCKED_MIN_COLUMNS = 16_384
BLOCKS_PER_K = 4


def _at_most_kth_best(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, 1) a value at most each row's k-th best score: every column at or above it is kept, the
    k best and their ties among them, and `top_k` sorts only those.

    A narrow row gives its k-th best exactly. A wide one (a ranking over every tag of a large
    vocabulary) gives the k-th best of its block maxima: k blocks each hold a score at least that
    high, so the row's k-th best is too, and few scores of a row lie above it. One pass for the
    maxima is much cheaper than partitioning the whole row."""
    b, m = scores.shape
    n_blocks = BLOCKS_PER_K * k
    width = m // n_blocks
    if m < BLOCKED_MIN_COLUMNS or width < 2:
        return -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    maxima = np.empty((b, n_blocks + 1), scores.dtype)
    np.max(scores[:, : n_blocks * width].reshape(b, n_blocks, width), axis=2, out=maxima[:, :n_blocks])
    maxima[:, n_blocks] = scores[:, n_blocks * width :].max(axis=1) if m > n_blocks * width else -np.inf
    return -np.partition(-maxima, k - 1, axis=1)[:, k - 1 : k]
