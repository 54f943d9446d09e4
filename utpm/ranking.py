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
    rows, cols = _columns_at_or_above_a_bound(scores, k)
    tie = cols if ids is None else np.asarray(ids)[rows, cols]
    order = np.lexsort((tie, -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    start = np.zeros(b, np.int64)
    np.cumsum(np.bincount(rows, minlength=b)[:-1], out=start[1:])
    return cols[(np.arange(len(rows)) - start[rows]) < k].reshape(b, k).astype(np.int64)


# Rows at least this wide are cut into blocks (at least BLOCKS_PER_K * k, at most BLOCK_WIDTH wide).
BLOCKED_MIN_COLUMNS = 16_384
BLOCKS_PER_K = 4
BLOCK_WIDTH = 1024


def _columns_at_or_above_a_bound(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every score at or above a bound at most its row's k-th best score: the k
    best and their ties among them, which is all `top_k` sorts.

    A narrow row's bound is its k-th best exactly. A wide one (a ranking over every tag of a large
    vocabulary) takes the k-th best of its block maxima: k blocks each hold a score at least that
    high, so the row's k-th best is too. Only blocks whose maximum reaches the bound can hold a
    column at or above it, so only those are searched: one pass over the row for the maxima, instead
    of partitioning the row or comparing every column with the bound."""
    b, m = scores.shape
    n_blocks = max(BLOCKS_PER_K * k, m // BLOCK_WIDTH)
    width = m // n_blocks
    if m < BLOCKED_MIN_COLUMNS or width < 2:
        rows, cols = np.nonzero(scores >= -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k])
        return rows, cols
    whole = n_blocks * width
    blocks = scores[:, :whole].reshape(b, n_blocks, width)
    maxima = np.empty((b, n_blocks + 1), scores.dtype)
    np.max(blocks, axis=2, out=maxima[:, :n_blocks])
    maxima[:, n_blocks] = scores[:, whole:].max(axis=1) if m > whole else -np.inf
    bound = -np.partition(-maxima, k - 1, axis=1)[:, k - 1 : k]
    block_rows, block_ids = np.nonzero(maxima[:, :n_blocks] >= bound)
    at, offset = np.nonzero(blocks[block_rows, block_ids] >= bound[block_rows])
    rows, cols = block_rows[at], block_ids[at] * width + offset
    if m > whole:  # the tail beyond the last whole block
        tail_rows, tail_cols = np.nonzero(scores[:, whole:] >= bound)
        rows, cols = np.concatenate([rows, tail_rows]), np.concatenate([cols, tail_cols + whole])
    return rows, cols
