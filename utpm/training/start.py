"""The default model's starting point: a linear scorer over b_t and every phi feature, tuned on Prec@K.

`utpm-hist` scores s(u, t) = u . o_t + b_t + g(phi_ut). At the start the tag embeddings are zero and
the MLP of g outputs zero, so the model computes

    s(u, t) = w_b * log1p(pop_t) + sum_j w_j * phi_ut[j]     (the second term on the user's candidates)

`tune_start` picks (w_b, w) by coordinate ascent over small grids, directly on the mean Prec@K of the
users given, from the features the model's own `HistoryEncoder` produces for them, i.e. what the
model (and the service) computes at the start. It begins at the blend (w_b = 1, a on log1p(count),
c on log1p(distinct items)), takes a coordinate's new value only when it scores higher (ties go to
the smaller |w|), and is deterministic. `utpm.training.history.train_history` tunes it on the
training examples and keeps it if it does at least as well as the blend on the validation users.

Torch is used for the batched scoring only, no gradients. A score is computed only for the tags that can
reach a user's top K: its own (candidates, changed b_t) and the K best of the rest (`StartProblem.top`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from utpm.features.history import PHI_NAMES, HistoryBatch
from utpm.features.sorted_keys import find_sorted, rank_in_row
from utpm.features.vocab import Vocabulary
from utpm.ranking import top_k

# Weights tried for each phi feature, and for b_t (positive: the popularity order of the tags outside
# the user's candidates must stay that of b_t, as in the model).
PHI_GRID = (-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
BIAS_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEPS = 3
_TIE = 1e-9


@dataclass
class StartProblem:
    """What a linear start is scored on, for B users (or training examples): b_t shared by all
    (`bias`) plus sparse per-user changes (`delta_*`, e.g. a training user's own labels left out of
    the popularity), the candidates with their phi, the label tags C in the vocabulary (sparse) and
    |C| (which counts label tags outside the vocabulary too). Users with an empty C are left out."""

    bias: torch.Tensor  # (n_tags,) b_t, 0 at padding and OOV
    delta_rows: torch.Tensor  # (D,) user row of each change of b_t
    delta_cols: torch.Tensor  # (D,) tag id
    delta_vals: torch.Tensor  # (D,) added to b_t
    hist_ids: torch.Tensor  # (B, m)
    hist_feats: torch.Tensor  # (B, m, P)
    hist_mask: torch.Tensor  # (B, m)
    target_keys: torch.Tensor  # sorted row * n_tags + tag id of every (user, label tag in C)
    n_clicked: torch.Tensor  # (B,) |C|
    _own_tags: _OwnTags | None = field(default=None, init=False, repr=False, compare=False)
    _columns_cache: tuple[tuple[float, int], np.ndarray, torch.Tensor] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    CHUNK = 2048

    @classmethod
    def build(
        cls,
        batch: HistoryBatch,
        bias: np.ndarray,
        clicked: Sequence[set[str]],
        tags: Vocabulary,
        deltas: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> StartProblem:
        """`bias` (n_tags,): b_t; `deltas[j]` (tag ids, values): user j's own changes of b_t."""
        n_tags = len(tags)
        keep = np.asarray([j for j, c in enumerate(clicked) if c], np.int64)
        m = max(1, int(batch.hist_mask[keep].sum(1).max())) if len(keep) else 1
        b = np.asarray(bias, np.float32).copy()
        b[: Vocabulary.OOV + 1] = 0.0
        lookup = tags.lookup
        keys: list[int] = []
        dr: list[np.ndarray] = []
        dc: list[np.ndarray] = []
        dv: list[np.ndarray] = []
        for r, j in enumerate(keep.tolist()):
            ids = {lookup.get(t, Vocabulary.OOV) for t in clicked[j]}
            keys.extend(r * n_tags + x for x in ids if x > Vocabulary.OOV)
            if deltas is not None and len(deltas[j][0]):
                dr.append(np.full(len(deltas[j][0]), r, np.int64))
                dc.append(np.asarray(deltas[j][0], np.int64))
                dv.append(np.asarray(deltas[j][1], np.float32))
        none_i, none_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return cls(
            bias=torch.from_numpy(b),
            delta_rows=torch.from_numpy(np.concatenate(dr) if dr else none_i),
            delta_cols=torch.from_numpy(np.concatenate(dc) if dc else none_i),
            delta_vals=torch.from_numpy(np.concatenate(dv) if dv else none_f),
            hist_ids=torch.from_numpy(np.ascontiguousarray(batch.hist_ids[keep, :m])),
            hist_feats=torch.from_numpy(np.ascontiguousarray(batch.hist_feats[keep, :m])),
            hist_mask=torch.from_numpy(np.ascontiguousarray(batch.hist_mask[keep, :m])),
            target_keys=torch.from_numpy(np.sort(np.asarray(keys, np.int64))),
            n_clicked=torch.tensor([len(clicked[j]) for j in keep.tolist()], dtype=torch.float32),
        )

    @property
    def users(self) -> int:
        return len(self.n_clicked)

    def top(self, w_bias: float, w: np.ndarray, k: int) -> torch.Tensor:
        """(B, k) tag ids of the best k tags of s = w_bias * b_t + w . phi (padding and OOV excluded),
        equal scores by the lower id, with the model's arithmetic: b_t (with the user's changes) times
        w_bias, plus the history part on the candidates.

        Scored on each user's own tags only (its candidates and changed b_t) and the k best of the
        others, whose order is that of w_bias * b_t alone (`_columns`): the same top k as scoring
        every tag, over a few hundred columns instead of the whole vocabulary."""
        k = min(k, len(self.bias) - Vocabulary.OOV - 1)
        wt = torch.from_numpy(np.asarray(w, np.float32))
        cols, fixed = self._columns(float(w_bias), k)
        m = self.hist_ids.shape[1]
        out = []
        with torch.no_grad():
            for lo in range(0, self.users, self.CHUNK):
                hi = min(lo + self.CHUNK, self.users)
                s = fixed[lo:hi].clone()
                s[:, k : k + m] += (self.hist_feats[lo:hi] @ wt) * self.hist_mask[lo:hi]
                pos = top_k(s.numpy(), k, cols[lo:hi])
                out.append(torch.from_numpy(np.take_along_axis(cols[lo:hi], pos, 1)))
        return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)

    def _columns(self, w_bias: float, k: int) -> tuple[np.ndarray, torch.Tensor]:
        """(B, k + m + d) tag ids and the part of their scores that does not depend on w: per user the
        k best tags that are not its own (w_bias * b_t, -inf where a user has fewer), its candidates
        ((b_t + change) * w_bias, w . phi added by `top`) and its other changed tags. The k best of the
        others are among the first k + (the most own tags of a user) tags of w_bias * b_t then the
        lower id, one order for every user. Cached for the last (w_bias, k): tuning varies w at a
        fixed w_bias."""
        if self._columns_cache is None or self._columns_cache[0] != (w_bias, k):
            n_tags, own = len(self.bias), self._own()
            with torch.no_grad():
                sb = self.bias * w_bias
                sb[: Vocabulary.OOV + 1] = -torch.inf
                first = top_k(sb.numpy()[None], k + own.most)[0]
                grid = np.arange(self.users, dtype=np.int64)[:, None] * n_tags + first[None, :]
                free = ~find_sorted(own.keys, grid)[1]
                nth = np.cumsum(free, axis=1)
                r, j = np.nonzero(free & (nth <= k))
                out_ids = torch.zeros((self.users, k), dtype=torch.long)
                out_scores = torch.full((self.users, k), -torch.inf)
                out_ids[r, nth[r, j] - 1] = torch.from_numpy(first[j])
                out_scores[r, nth[r, j] - 1] = sb[first[j]]
                ids = self.hist_ids
                hist = (self.bias[ids] + own.hist_delta) * w_bias
                hist[ids <= Vocabulary.OOV] = -torch.inf
                changed = (self.bias[own.delta_ids] + own.delta_vals) * w_bias
                changed[own.delta_ids <= Vocabulary.OOV] = -torch.inf
                fixed = torch.cat([out_scores, hist, changed], 1)
                cols = torch.cat([out_ids, ids, own.delta_ids], 1).numpy()
            self._columns_cache = ((w_bias, k), cols, fixed)
        return self._columns_cache[1], self._columns_cache[2]

    def _own(self) -> _OwnTags:
        if self._own_tags is None:
            self._own_tags = _OwnTags.of(self)
        return self._own_tags

    def precision(self, w_bias: float, w: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
        """Mean Prec@k (Eq. 5) of s = w_bias * b_t + w . phi over the users, for each k of `ks`."""
        if not self.users:
            return {k: 0.0 for k in ks}
        return {k: float(v.mean()) for k, v in self._user_precision(w_bias, w, ks).items()}

    def per_user(self, w_bias: float, w: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
        """Prec@k of each user (in the order of `build`'s users with a non-empty C), for each k of `ks`."""
        if not self.users:
            return {k: np.zeros(0, np.float32) for k in ks}
        return {k: v.numpy() for k, v in self._user_precision(w_bias, w, ks).items()}

    def _user_precision(self, w_bias: float, w: np.ndarray, ks: Sequence[int]) -> dict[int, torch.Tensor]:
        top = self.top(w_bias, w, max(ks))
        codes = (np.arange(self.users, dtype=np.int64)[:, None] * len(self.bias) + top.numpy()).ravel()
        hit = find_sorted(self.target_keys.numpy(), codes)[1]  # sorted keys: a binary search, not torch.isin's sort
        hits = torch.from_numpy(hit.reshape(top.shape)).float().cumsum(1)
        return {k: hits[:, min(k, hits.shape[1]) - 1] / self.n_clicked.clamp(max=k) for k in ks}

    def score(self, w_bias: float, w: np.ndarray, ks: Sequence[int]) -> float:
        """The tuning objective: mean of Prec@k over `ks` (as the early stopping's validation score)."""
        return float(np.mean(list(self.precision(w_bias, w, ks).values())))


@dataclass
class _OwnTags:
    """Each user's own tags, the only ones whose score is not w_bias * b_t: its candidates and the
    tags whose b_t it changes (at most one change per user and tag)."""

    keys: np.ndarray  # sorted row * n_tags + tag id of every own tag
    most: int  # the most own tags of one user
    hist_delta: torch.Tensor  # (B, m) the user's change of b_t at each candidate (0 where none)
    delta_ids: torch.Tensor  # (B, d) the changed tags that are not candidates (0: none)
    delta_vals: torch.Tensor  # (B, d) their changes

    @classmethod
    def of(cls, p: StartProblem) -> _OwnTags:
        n_tags, b = len(p.bias), p.users
        ids = p.hist_ids.numpy()
        h_keys = np.arange(b, dtype=np.int64)[:, None] * n_tags + ids
        known = ids > Vocabulary.OOV
        d_keys = p.delta_rows.numpy() * n_tags + p.delta_cols.numpy()
        order = np.argsort(d_keys, kind="stable")
        d_keys, d_vals = d_keys[order], p.delta_vals.numpy()[order]
        if len(np.unique(d_keys)) != len(d_keys):
            raise ValueError("a user changes the b_t of one tag more than once")
        at, hit = find_sorted(d_keys, h_keys)
        hist_delta = np.where(known & hit, d_vals[at] if len(d_keys) else 0.0, 0.0).astype(np.float32)
        rest = ~np.isin(d_keys, h_keys[known])
        r_keys, r_vals = d_keys[rest], d_vals[rest]
        r_row = r_keys // n_tags
        per_row = np.bincount(r_row, minlength=b)
        slot = rank_in_row(r_row, per_row)
        width = max(1, int(per_row.max()) if b else 1)
        delta_ids = np.zeros((b, width), np.int64)
        delta_vals = np.zeros((b, width), np.float32)
        delta_ids[r_row, slot] = r_keys % n_tags
        delta_vals[r_row, slot] = r_vals
        keys = np.union1d(h_keys[known], d_keys)
        return cls(
            keys=keys,
            most=int(np.bincount(keys // n_tags, minlength=b).max()) if len(keys) else 0,
            hist_delta=torch.from_numpy(hist_delta),
            delta_ids=torch.from_numpy(delta_ids),
            delta_vals=torch.from_numpy(delta_vals),
        )


@dataclass
class TunedStart:
    w_bias: float
    weights: dict[str, float]  # by PHI_NAMES, every feature
    score: float  # the objective at the tuned weights
    start_score: float  # the objective at the starting (blend) weights
    evaluations: int
    users: int  # users (or examples) with a non-empty C it was tuned on

    def vector(self) -> np.ndarray:
        return np.asarray([self.weights[n] for n in PHI_NAMES], np.float64)


def _pick(scores: list[tuple[float, float]], current: float, current_score: float) -> tuple[float, float]:
    """(value, score): the best score; ties (within _TIE) to the smaller |value|, then the current one."""
    best_v, best_s = current, current_score
    for v, s in scores:
        if s > best_s + _TIE or (abs(s - best_s) <= _TIE and abs(v) < abs(best_v)):
            best_v, best_s = v, s
    return best_v, best_s


def tune_start(
    problem: StartProblem,
    start: dict[str, float],
    ks: Sequence[int] = (1, 2, 3),
    features: Sequence[str] = PHI_NAMES,
    phi_grid: Sequence[float] = PHI_GRID,
    bias_grid: Sequence[float] = BIAS_GRID,
    sweeps: int = SWEEPS,
    tune_bias: bool = True,
    w_bias: float = 1.0,
) -> TunedStart:
    """Coordinate ascent on the mean Prec@k over `ks` of `problem`'s users, from w_b = `w_bias` and `start`
    (by `PHI_NAMES`; the others 0): each sweep tries every grid value of b_t's weight and of each
    feature in `features` in turn, keeping the best (ties to the smaller |w|); it stops after `sweeps`
    sweeps or a sweep that changes nothing. Never scores below the start on `problem`."""
    for name in (*start, *features):
        if name not in PHI_NAMES:
            raise ValueError(f"unknown history feature {name!r}; valid: {PHI_NAMES}")
    w = np.zeros(len(PHI_NAMES), np.float64)
    for name, v in start.items():
        w[PHI_NAMES.index(name)] = v
    wb = w_bias
    n_eval = 1
    best = start_score = problem.score(wb, w, ks)
    for _ in range(sweeps):
        changed = False
        if tune_bias:
            tried = []
            for v in bias_grid:
                if v != wb:
                    tried.append((v, problem.score(v, w, ks)))
                    n_eval += 1
            v, s = _pick(tried, wb, best)
            changed |= v != wb
            wb, best = v, s
        for name in features:
            j = PHI_NAMES.index(name)
            cur = w[j]
            tried = []
            for v in phi_grid:
                if v != cur:
                    w[j] = v
                    tried.append((v, problem.score(wb, w, ks)))
                    n_eval += 1
            v, s = _pick(tried, cur, best)
            changed |= v != cur
            w[j], best = v, s
        if not changed:
            break
    return TunedStart(
        w_bias=float(wb),
        weights={n: float(w[j]) for j, n in enumerate(PHI_NAMES)},
        score=best,
        start_score=start_score,
        evaluations=n_eval,
        users=problem.users,
    )
