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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """scores (B, n) -> (B, min(k, n)) column ids, best first, equal scores by the lower column.

    Exact at the k-th place too: of the columns tied with the k-th best score, the lowest ones are
    kept. Scores must not be NaN.
    """
    scores = np.asarray(scores)
    b, n = scores.shape
    k = max(0, min(k, n))
    if k == 0 or b == 0:
        return np.zeros((b, k), np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (B, 1): the k-th best score
    above_r, above_c = np.nonzero(scores > kth)
    tie_r, tie_c = np.nonzero(scores == kth)  # row-major: each row's tied columns in ascending order
    per_row = np.bincount(tie_r, minlength=b)
    start = np.zeros(b, np.int64)
    np.cumsum(per_row[:-1], out=start[1:])
    need = k - np.bincount(above_r, minlength=b)
    keep = (np.arange(len(tie_r)) - start[tie_r]) < need[tie_r]
    rows = np.concatenate([above_r, tie_r[keep]])
    cols = np.concatenate([above_c, tie_c[keep]])
    cols = cols[np.lexsort((cols, rows))].reshape(b, k)  # each row's k columns in ascending order
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1).astype(np.int64)


def order_candidates(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """scores, ids (B, m) of each row's candidates -> (B, m) positions, best score first, equal
    scores by the lower id (the rule of `top_k` for candidates gathered from several sources)."""
    return np.lexsort((ids, -np.asarray(scores)), axis=1)
