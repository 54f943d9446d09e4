"""The default model's served search: the top-k tags by s(u, t) = u . o_t + b_t (+ g on the user's
history tags), without scoring every tag.

Candidates scored exactly: the user's history tags (with g) and the `popular` tags, the M with the
highest b_t (b_t does not depend on the user, so they are chosen once per bundle). A tag outside both
scores at most `b_(M+1) + |u| * max_t |o_t|`; when the k-th best candidate is already above that bound
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
from model_export.scorer import RESERVED, history_scores, model_part
from utpm.ranking import top_k

POPULAR_CANDIDATES = 1024  # M: M dot products per user, small next to the model run
NORM_CHUNK = 65_536  # rows of the tag table per step of the norm scan (no full-table temporaries)
# relative slack on the bound: a float32 dot product of length U errs by at most about U * 2^-24 of
# |u| |o_t|, under 1e-5 up to U = 167 (the bundles here have U = 64 and 128)
BOUND_SLACK = 1e-5


@dataclass
class TwoStageResult:
    ids: np.ndarray  # (B, k) int64, best first, -1 padded
    scores: np.ndarray  # (B, k) float32, -inf padded
    searched: np.ndarray  # (B,) bool: the index was searched for this user (the bound did not settle it)


class TwoStageSearch:
    """`search` (u . o_t + b_t (+ g)) needs the index; `search_linear` (b_t (+ g)) needs neither the index
    nor the tag table, so that `index=None` builds only what it reads."""

    def __init__(self, bundle: Bundle, index: TagIndex | None, popular: int = POPULAR_CANDIDATES) -> None:
        if bundle.tag_bias is None:
            raise ValueError(f"bundle {bundle.path} has no tag bias: the two-stage search is for utpm-hist bundles")
        self.bundle, self.index = bundle, index
        self.bias = bias = np.asarray(bundle.tag_bias, np.float32)
        order = RESERVED + np.argsort(-bias[RESERVED:], kind="stable")
        self.by_bias = order  # every tag, highest b_t first (ties by the lower id): `search_linear`'s candidates
        # tag id -> its place in `by_bias` (reserved ids: past the end), so the popular tags' columns are
        # the places below M: batch lookups instead of isin per user
        self.bias_rank = np.full(len(bias), len(bias), np.int32)
        self.bias_rank[order] = np.arange(len(order), dtype=np.int32)
        self.popular = np.ascontiguousarray(order[:popular]).astype(np.int64)
        if index is None:
            return
        self.table = table = np.asarray(bundle.embeddings, np.float32)
        self.popular_table = np.ascontiguousarray(table[self.popular].T)  # (U, M): one matmul per batch
        self.popular_bias = bias[self.popular]
        rest = order[popular:]
        # the best score a tag outside the candidates can reach, less |u|: its bias at most, plus |o_t|
        self.outside_bias = float(bias[rest[0]]) if len(rest) else -np.inf
        self.max_norm = _max_norm_outside(table, order[:popular]) if len(rest) else 0.0

    def search(self, u: np.ndarray, hist_ids: np.ndarray, hist_g: np.ndarray, k: int) -> TwoStageResult:
        """u (B, U); hist_ids (B, Hh) the history tags (ids < 2: padding) with g (B, Hh), the history
        path's part of their score -> the top-k of the final score u . o_t + b_t (+ g) over every tag."""
        if self.index is None:
            raise ValueError("this TwoStageSearch was built without an index: only search_linear is available")
        u = np.asarray(u, np.float32)
        b = len(u)
        pop_scores = u @ self.popular_table + self.popular_bias  # (B, M)
        hist_ok = hist_ids >= RESERVED
        slot = self._places(hist_ids, hist_ok)
        dup_row, dup_col = np.nonzero(slot < len(self.popular))
        pop_scores[dup_row, slot[dup_row, dup_col]] = -np.inf  # scored with their g among the history tags
        both = np.concatenate([pop_scores, history_scores(u, self.table, self.bias, hist_ids, hist_g)], axis=1)
        kk = min(k, both.shape[1])
        kth = -np.partition(-both, kk - 1, axis=1)[:, kk - 1] if kk else np.full(b, -np.inf, np.float32)
        reach = np.linalg.norm(u, axis=1) * self.max_norm
        bound = self.outside_bias + reach
        if np.isfinite(self.outside_bias):
            # strictly above, with float32's rounding of u . o_t as slack: an outside tag that ties the k-th
            # (and may win the tie by a lower id) or rounds up past its bound sends the user to the index
            bound = bound + BOUND_SLACK * (abs(self.outside_bias) + reach)
        searched = ~((kth > bound) & np.isfinite(kth) & (kk == k))
        rows = np.flatnonzero(searched)
        ann_ids = np.full((b, k if len(rows) else 0), -1, np.int64)
        ann_s = np.full(ann_ids.shape, -np.inf, np.float32)
        if len(rows):
            # the history tags, scored with their g above (padding ids are reserved: never returned anyway)
            s, i = self.index.search(self.bundle.index_queries(u[rows]), k, exclude=hist_ids[rows])
            # the popular ones are scored already
            fresh = (i >= RESERVED) & (self._places(i, i >= RESERVED) >= len(self.popular))
            if self.index.max_sq_norm is not None:  # scored as the candidates are, not from L2 distances
                s = model_part(u[rows], self.table, self.bias, np.where(fresh, i, 0))
            ann_ids[rows] = np.where(fresh, i, -1)
            ann_s[rows] = np.where(fresh, s, -np.inf)
        # the top-k of every row's candidates (popular, history, index), ties by the lower tag id as in
        # every ranking (utpm.ranking); excluded ones are -inf and come last, as padding
        cand = np.concatenate(
            [np.broadcast_to(self.popular, pop_scores.shape), np.where(hist_ok, hist_ids, -1), ann_ids], 1
        )
        return _ranked(np.concatenate([both, ann_s], axis=1), cand, k, searched)

    def _places(self, ids: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """`bias_rank` of `ids` where `ok`, past every place elsewhere (padding, reserved ids)."""
        return np.where(ok, self.bias_rank[np.where(ok, ids, 0)], len(self.bias))

    def search_linear(self, hist_ids: np.ndarray, hist_g: np.ndarray, k: int) -> TwoStageResult:
        """`search` for a linear scorer (u . o_t = 0 for every tag): the top-k of b_t (+ g on the history
        tags), exactly, without u or the index. A tag outside the user's history tags and the k + Hh
        highest b_t cannot enter the top-k: at least k of those are no history tag and score at least
        its b_t, and win a tie by their lower id, as in every ranking (`utpm.ranking`)."""
        b, hh = hist_ids.shape
        m = min(k + hh, len(self.by_bias))
        pop = self.by_bias[:m]
        pop_scores = np.repeat(self.bias[pop][None, :], b, axis=0)  # (B, m)
        hist_ok = hist_ids >= RESERVED
        place = self._places(hist_ids, hist_ok)
        dup_row, dup_col = np.nonzero(place < m)
        pop_scores[dup_row, place[dup_row, dup_col]] = -np.inf  # scored with their g among the history tags
        safe = np.where(hist_ok, hist_ids, 0)
        hist_s = np.where(hist_ok, self.bias[safe] + np.asarray(hist_g, np.float32), -np.inf).astype(np.float32)
        cand = np.concatenate([np.broadcast_to(pop, pop_scores.shape), np.where(hist_ok, hist_ids, -1)], axis=1)
        return _ranked(np.concatenate([pop_scores, hist_s], axis=1), cand, k, np.zeros(b, bool))


def _ranked(cs: np.ndarray, cand: np.ndarray, k: int, searched: np.ndarray) -> TwoStageResult:
    """The top-k of every row's candidates `cand` (tag ids, -1 unused) scored `cs`, ties by the lower
    tag id as in every ranking (utpm.ranking); -inf ones come last as padding (-1), and rows with
    fewer than k candidates are padded to k."""
    top = top_k(cs, k, ids=cand)
    scores = np.take_along_axis(cs, top, axis=1).astype(np.float32)
    ids = np.where(np.isfinite(scores), np.take_along_axis(cand, top, axis=1), -1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
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
