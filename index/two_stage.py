"""The default model's served search: the top-k tags by s(u, t) = u . o_t + b_t (+ g on the user's
history tags), without scoring every tag.

Candidates scored exactly: the user's history tags (with g) and the `popular` tags, the M with the
highest b_t (b_t does not depend on the user, so they are chosen once per bundle). A tag outside both
scores at most `b_(M+1) + |u| * max_t |o_t|`; when the k-th best candidate already reaches that bound
the candidates' top-k is the exact top-k and the index is not searched. Otherwise the index's top-k
over [u, 1] . [o_t, b_t] (history tags excluded) joins the candidates. With a prior that dominates u . o_t
(a model near its popularity start) nearly every user is settled exactly without the index, whose IVF
lists would need a high nprobe for tags that are popular but spread over every list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.tag_index import TagIndex
from model_export.bundle import Bundle
from model_export.scorer import RESERVED

POPULAR_CANDIDATES = 1024  # M: M dot products per user, small next to the model run
NORM_CHUNK = 65_536  # rows of the tag table per step of the norm scan (no full-table temporaries)


@dataclass
class TwoStageResult:
    ids: np.ndarray  # (B, k) int64, best first, -1 padded
    scores: np.ndarray  # (B, k) float32, -inf padded
    searched: np.ndarray  # (B,) bool: the index was searched for this user (the bound did not settle it)


class TwoStageSearch:
    def __init__(self, bundle: Bundle, index: TagIndex, popular: int = POPULAR_CANDIDATES) -> None:
        if bundle.tag_bias is None:
            raise ValueError(f"bundle {bundle.path} has no tag bias: the two-stage search is for utpm-hist bundles")
        self.bundle, self.index = bundle, index
        table = np.asarray(bundle.embeddings, np.float32)
        bias = np.asarray(bundle.tag_bias, np.float32)
        order = RESERVED + np.argsort(-bias[RESERVED:], kind="stable")
        self.popular = np.ascontiguousarray(order[:popular]).astype(np.int64)
        self.popular_table = np.ascontiguousarray(table[self.popular].T)  # (U, M): one matmul per batch
        self.popular_bias = bias[self.popular]
        rest = order[popular:]
        # the best score a tag outside the candidates can reach, less |u|: its bias at most, plus |o_t|
        self.outside_bias = float(bias[rest[0]]) if len(rest) else -np.inf
        self.max_norm = _max_norm_outside(table, order[:popular]) if len(rest) else 0.0

    def search(self, u: np.ndarray, hist_ids: np.ndarray, hist_scores: np.ndarray, k: int) -> TwoStageResult:
        """u (B, U); hist_ids (B, Hh) the history tags (ids < 2: padding) with their final scores
        (B, Hh) u . o_t + b_t + g -> the top-k of the final score over every tag."""
        u = np.asarray(u, np.float32)
        b = len(u)
        pop_scores = u @ self.popular_table + self.popular_bias  # (B, M)
        in_hist = np.zeros(pop_scores.shape, bool)
        for row in range(b):
            in_hist[row] = np.isin(self.popular, hist_ids[row])
        pop_scores[in_hist] = -np.inf  # scored with their g among the history tags
        hist_ok = hist_ids >= RESERVED
        hist_s = np.where(hist_ok, hist_scores, -np.inf).astype(np.float32)
        both = np.concatenate([pop_scores, hist_s], axis=1)
        kk = min(k, both.shape[1])
        kth = -np.partition(-both, kk - 1, axis=1)[:, kk - 1] if kk else np.full(b, -np.inf, np.float32)
        bound = self.outside_bias + np.linalg.norm(u, axis=1) * self.max_norm
        searched = ~((kth >= bound) & np.isfinite(kth) & (kk == k))
        ann_ids: dict[int, np.ndarray] = {}
        ann_scores: dict[int, np.ndarray] = {}
        rows = np.flatnonzero(searched)
        if len(rows):
            exclude = [hist_ids[r][hist_ok[r]] for r in rows]
            s, i = self.index.search(self.bundle.index_queries(u[rows]), k, exclude=exclude)
            for j, r in enumerate(rows.tolist()):
                fresh = (i[j] >= RESERVED) & ~np.isin(i[j], self.popular)  # the popular ones are scored already
                ann_ids[r], ann_scores[r] = i[j][fresh], s[j][fresh]
        ids = np.full((b, k), -1, np.int64)
        scores = np.full((b, k), -np.inf, np.float32)
        empty_i, empty_s = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for row in range(b):
            keep = ~in_hist[row]
            cand = np.concatenate([self.popular[keep], hist_ids[row][hist_ok[row]], ann_ids.get(row, empty_i)])
            cs = np.concatenate([pop_scores[row][keep], hist_s[row][hist_ok[row]], ann_scores.get(row, empty_s)])
            top = np.argsort(-cs, kind="stable")[:k]
            ids[row, : len(top)], scores[row, : len(top)] = cand[top], cs[top]
        return TwoStageResult(ids, scores, searched)


def _max_norm_outside(table: np.ndarray, inside: np.ndarray) -> float:
    """max |o_t| over the tags neither reserved nor in `inside`, a chunk of rows at a time."""
    sq = np.empty(len(table), np.float32)
    for lo in range(0, len(table), NORM_CHUNK):
        chunk = table[lo : lo + NORM_CHUNK]
        sq[lo : lo + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
    sq[:RESERVED] = 0.0
    sq[inside] = 0.0
    return float(np.sqrt(sq.max()))
