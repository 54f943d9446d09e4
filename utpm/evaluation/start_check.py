"""`utpm bench start`: how the default model's starting points do on validation users only.

For each fold of `utpm experiment --folds` (the same splits, the same validation users, no test user
is read), the linear scorers the model can start from, scored on the fold's validation users:

- `blend`: the blend start (a, c tuned on the validation users: in-sample for it);
- `tuned`: the default start, tuned on the training examples (`tune_linear_start`), before the
  validation gate of `train_history`;
- `half-blend` / `half-tuned`: the validation users split in two; on each half, the blend's a, c and
  a tuned start both chosen on the other half, so both are out of sample: what tuning a dozen weights
  on validation users alone would give;
- `train-blend`: the blend with a, c chosen on the training users at the protocol's cut instead
  (each encoded as training encodes it: tag statistics of the other half, b_t without their own
  labels; the fold's popularity count), scored on every validation user: a choice made on four
  times as many users, out of sample for the validation users;
- `train-count`: the same with the popularity count (events or users, `POPULARITY_COUNTS`) also
  chosen on the training users, where the model's start takes the one its blend chose on the
  validation users;
- `half-credit`: the half-blend plus e * log1p(the tag's credited history items, `credited_counts`),
  a, c and e chosen on the other half of the validation users (ties to e = 0): what telling a
  clicked item's tags apart would add, paired per user against the half-blend (`candidate_gap`); a
  candidate feature, not in the model (the service's request carries each field's values, not
  which of them were on the same item);
- `half-items`: the same with e * the tag's score from the items that users who clicked the same
  items went on to click (`item_tag_scores`, `utpm.features.item_neighbours`), whose tags are
  candidates too: what the user's clicked items, tagged or not, would add. The check that put the
  items in the default model (docs/results.md, "A second candidate"); it reads every clicked item,
  where the model reads the most recent `recent_items`, as it did when it was measured;
- `oracle` (with the data's `truth.csv`, the synthetic data's planted interests): the user's planted
  interests first, in the blend's order, then the blend: what knowing the interests adds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utpm.data.loading import load_dataset
from utpm.data.protocol import ProtocolSplit
from utpm.evaluation.metrics import precision_at_k, user_precision
from utpm.evaluation.personalisation import bootstrap_mean_ci
from utpm.evaluation.yardsticks import (
    BLEND_GRID,
    POPULARITY_COUNTS,
    blend_ranking,
    history_counts,
    popularity,
    popularity_counts,
    tag_order,
)
from utpm.features.history import PHI_NAMES, HistoryBatch
from utpm.features.item_neighbours import ItemNeighbours
from utpm.features.vocab import Vocabulary

if TYPE_CHECKING:
    from utpm.training.history import HistorySetup
    from utpm.training.start import StartProblem

KS = (1, 2, 3)
CREDIT_SWEEPS = 5
# `half-items`: each item's nearest items with tags kept, and the user's best items whose tags count
ITEMS_K = 200
ITEMS_TOP = 100
CANDIDATES = ("credit", "items")
# every row's scored starting points (`oracle` only with the data's truth.csv)
STARTING_POINTS = (
    "blend",
    "tuned_start",
    "train-blend",
    "train-count",
    "half-blend",
    "half-tuned",
    *(f"half-{c}" for c in CANDIDATES),
    "oracle",
)


def credited_counts(
    split: ProtocolSplit, user: int, max_tags: int | None, sweeps: int = CREDIT_SWEEPS
) -> dict[str, float]:
    """tag -> how many of the user's label-1 history items are credited to it: each item's click is
    shared among its tags in proportion to their credit (at first their counts), `sweeps` times (EM
    for "each click is explained by one of the item's tags"), so a tag that only rides along with a
    stronger one on the same items loses its credit to it: the paper's question, which of a clicked
    item's tags the user cared about, asked of one user's history."""
    lo, hi = split.history.offsets[user], split.history.offsets[user + 1]
    items = [
        set(split.item_tags.row(int(item))[:max_tags])
        for item, y in zip(split.history.codes[lo:hi], split.history_values[lo:hi], strict=True)
        if y == 1
    ]
    return credit_items([tags for tags in items if tags], sweeps)


def credit_items(items: Sequence[set[str]], sweeps: int = CREDIT_SWEEPS) -> dict[str, float]:
    """tag -> its share of the clicks on `items` (each a set of tags), by `sweeps` EM sweeps from the counts."""
    credit: dict[str, float] = dict(Counter(t for tags in items for t in tags))
    for _ in range(sweeps):
        shared: dict[str, float] = dict.fromkeys(credit, 0.0)
        for tags in items:
            total = sum(credit[t] for t in tags)
            for t in tags:
                shared[t] += credit[t] / total
        credit = shared
    return credit


def item_tag_scores(
    split: ProtocolSplit, user: int, max_tags: int | None, neighbours: ItemNeighbours, top_items: int = ITEMS_TOP
) -> dict[str, float]:
    """tag -> its score from the items users who clicked the same items clicked (`ItemNeighbours`):
    the summed scores of the user's best unseen items that carry it, over the user's highest (0, 1]."""
    lo, hi = split.history.offsets[user], split.history.offsets[user + 1]
    seen = split.history.codes[lo:hi]
    items, score = neighbours.scores(seen[split.history_values[lo:hi] == 1], seen, top_items)
    out: dict[str, float] = {}
    for item, s in zip(items.tolist(), score.tolist(), strict=True):
        for t in split.item_tags.row(item)[:max_tags]:
            out[t] = out.get(t, 0.0) + s
    high = max(out.values(), default=1.0)
    return {t: v / high for t, v in out.items()}


def item_neighbours(
    split: ProtocolSplit, train_rows: np.ndarray, max_tags: int | None, k: int = ITEMS_K
) -> ItemNeighbours:
    """`ItemNeighbours` of the training users' label-1 items, history and label period (what training reads)."""
    clicked = []
    for i in train_rows.tolist():
        parts = []
        for r, values in ((split.history, split.history_values), (split.labels, split.label_values)):
            lo, hi = r.offsets[i], r.offsets[i + 1]
            parts.append(r.codes[lo:hi][values[lo:hi] == 1])
        clicked.append(np.concatenate(parts))
    has_tags = np.diff(split.item_tags.offsets) > 0
    return ItemNeighbours.fit(clicked, len(split.item_tags), has_tags, k)


class _CandidateBlend:
    """`half-credit` and `half-items` on one fold: the tables the blend ranks with (read once per fold)
    and every validation user's history counts and candidate features (`CANDIDATES`)."""

    def __init__(
        self,
        split: ProtocolSplit,
        train_rows: np.ndarray,
        count: str,
        max_tags: int,
        rows: Sequence[int],
        clicked: dict[int, set[str]],
        order: dict[str, int],
        item_k: int = ITEMS_K,
    ) -> None:
        self.order, self.clicked = order, clicked
        self.pop = popularity_counts(split, train_rows, max_tags, count)
        self.popular = popularity(split, train_rows, max_tags, order, count)
        neighbours = item_neighbours(split, train_rows, max_tags, item_k)
        self.users = {i: history_counts(split, i, max_tags) for i in rows}
        # the candidates' features, each already as the score added per unit of its weight e
        self.features: dict[str, dict[int, dict[str, float]]] = {
            "credit": {i: {t: math.log1p(v) for t, v in credited_counts(split, i, max_tags).items()} for i in rows},
            "items": {i: item_tag_scores(split, i, max_tags, neighbours) for i in rows},
        }

    def ranked(self, rows: Sequence[int], a: float, c: float, e: float, candidate: str) -> list[list[str]]:
        out = []
        features = self.features[candidate]
        for i in rows:
            extra = {t: e * v for t, v in features[i].items()} if e else None
            out.append(blend_ranking(self.users[i], self.pop, self.popular, a, c, max(KS), self.order, extra=extra))
        return out

    def per_user(
        self, rows: Sequence[int], weights: tuple[float, float, float], candidate: str = "credit"
    ) -> dict[int, list[float]]:
        lists = self.ranked(rows, *weights, candidate)
        return {k: [user_precision(r, self.clicked[i], k) for r, i in zip(lists, rows, strict=True)] for k in KS}

    def choose(
        self, fit: Sequence[int], candidate: str = "credit"
    ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The (a, c, e) with the best mean Prec@k over KS on the users `fit` (a, c from `BLEND_GRID`,
        e from it too; ties to the smaller e, a, c), and the best with e = 0: the blend's a, c as
        `tune_blend` chooses them, from the same scan."""
        best, weights, blend = -1.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
        clicked = [self.clicked[i] for i in fit]
        for e in BLEND_GRID:  # 0 first: after it, `weights` is the blend's
            for a in BLEND_GRID:
                for c in BLEND_GRID:
                    lists = self.ranked(fit, a, c, e, candidate)
                    s = float(np.mean([precision_at_k(lists, clicked, k).value for k in KS]))
                    if s > best + 1e-12:
                        best, weights = s, (a, c, e)
            if e == 0.0:
                blend = weights
        return weights, blend


def _grid_blend(problem: StartProblem) -> tuple[float, np.ndarray]:
    """The phi weights of the blend (a, c from `BLEND_GRID`, as `tune_blend`: ties to the smaller a,
    then c) with the best mean Prec@k over KS on `problem`, and that mean."""
    best, weights = -1.0, np.zeros(len(PHI_NAMES))
    for a in BLEND_GRID:
        for c in BLEND_GRID:
            w = np.zeros(len(PHI_NAMES))
            w[:2] = (a, c)
            score = problem.score(1.0, w, KS)
            if score > best + 1e-12:
                best, weights = score, w
    return best, weights


def _chosen_on_training(
    split: ProtocolSplit, st: HistorySetup
) -> tuple[np.ndarray, tuple[str, np.ndarray, np.ndarray]]:
    """On the training users at the protocol's cut: the blend's weights for the fold's popularity
    count (`train-blend`), and the count with its weights and b_t when the count is chosen there too
    (`train-count`; ties as `tune_blend`: events first)."""
    from utpm.training.history import popularity_tables, training_problem

    at_cut = [(i, h) for i, h in st.examples if h == int(st.seqs.n_hist[i])]
    best: tuple[float, str, np.ndarray, np.ndarray] | None = None
    fold_weights = np.zeros(len(PHI_NAMES))
    for count in POPULARITY_COUNTS:
        st_c = st
        if count != st.blend.popularity:
            pop, own_pop = popularity_tables(split, st.train_rows, st.tags, st.seqs.N, count)
            st_c = replace(st, pop=pop, own_pop=own_pop)
        on_training, w = _grid_blend(training_problem(st_c, at_cut))
        if count == st.blend.popularity:
            fold_weights = w
        if best is None or on_training > best[0] + 1e-12:
            best = (on_training, count, w, st_c.bias)
    assert best is not None
    return fold_weights, best[1:]


def _rows(batch: HistoryBatch, idx: np.ndarray) -> HistoryBatch:
    return HistoryBatch(
        [x[idx] for x in batch.ids],
        [x[idx] for x in batch.masks],
        [x[idx] for x in batch.counts],
        batch.hist_ids[idx],
        batch.hist_feats[idx],
        batch.hist_mask[idx],
        [],
    )


def check_start(
    data_path: str | Path,
    preset: str,
    folds: int,
    fold_seeds: Sequence[int],
    truth: dict[str, set[str]] | None,
    item_neighbours_k: int = ITEMS_K,
) -> list[dict[str, Any]]:
    """One row per fold: Prec@1/2/3 of each starting point on that fold's validation users
    (`item_neighbours_k`: the neighbours each item keeps for `half-items`)."""
    from utpm.evaluation.experiment import VAL_FRACTION, make_split
    from utpm.training.history import (
        HistoryTrainConfig,
        encode_users,
        history_preset,
        prepare_history,
        tune_linear_start,
    )
    from utpm.training.start import StartProblem, tune_start

    data = load_dataset(data_path)
    out = []
    for seed in fold_seeds:
        split = make_split(data, seed, folds)
        config = HistoryTrainConfig(
            preset=history_preset(preset), seed=seed, val_fraction=VAL_FRACTION, early_stop_ks=KS, eval_ks=KS
        )
        st = prepare_history(split, config)
        n = config.preset.N
        batch = encode_users(st.seqs, st.henc, st.val_rows)
        clicked = [split.clicked_tags(int(i), n) for i in st.val_rows]
        problem = StartProblem.build(batch, st.bias, clicked, st.tags)
        w_blend = np.zeros(len(PHI_NAMES))
        w_blend[:2] = st.blend[:2]
        tuned = tune_linear_start(st, config)
        train_weights, (count_chosen, count_weights, count_bias) = _chosen_on_training(split, st)
        count_problem = StartProblem.build(batch, count_bias, clicked, st.tags)
        row: dict[str, Any] = {
            "fold": seed,
            "val_users": problem.users,
            "item_neighbours": item_neighbours_k,
            "blend_weights": list(st.blend[:2]),
            "popularity": st.blend.popularity,
            "tuned": {"w_bias": tuned.w_bias, "weights": {k: v for k, v in tuned.weights.items() if v}},
            "blend": problem.precision(1.0, w_blend, KS),
            "tuned_start": problem.precision(tuned.w_bias, tuned.vector(), KS),
            "train_blend_weights": list(train_weights[:2]),
            "train-blend": problem.precision(1.0, train_weights, KS),
            "train_count": {"popularity": count_chosen, "weights": list(count_weights[:2])},
            "train-count": count_problem.precision(1.0, count_weights, KS),
        }
        # out of sample on validation: tune on one half, score on the other
        halves = np.array_split(np.random.default_rng(seed).permutation(len(st.val_rows)), 2)
        names = ("half-blend", "half-tuned", *(f"half-{c}" for c in CANDIDATES))
        sums = {name: dict.fromkeys(KS, 0.0) for name in names}
        by_row = {int(i): clicked[j] for j, i in enumerate(st.val_rows.tolist())}
        order = tag_order(split, st.train_rows, n)
        candidates = _CandidateBlend(
            split, st.train_rows, st.blend.popularity, n, list(by_row), by_row, order, item_neighbours_k
        )
        for cand in CANDIDATES:
            row[f"{cand}_weights"] = []
        gaps: dict[str, dict[int, list[float]]] = {cand: {k: [] for k in KS} for cand in CANDIDATES}
        half_blend: dict[int, dict[int, float]] = {k: {} for k in KS}  # validation row -> its half-blend Prec@k
        users = 0
        for h in (0, 1):
            fit, score = np.sort(halves[h]), np.sort(halves[1 - h])
            fit_rows, score_rows = ([int(st.val_rows[j]) for j in part if clicked[j]] for part in (fit, score))
            # the half's a, c as `tune_blend` would choose them for the fold's b_t (st.bias counts what the
            # whole fold's blend chose; a, c chosen with the other count would not be for it), from a
            # candidate's scan: its e = 0 part is that grid with those ties (tested)
            chosen_weights = {cand: candidates.choose(fit_rows, cand) for cand in CANDIDATES}
            blend_weights = chosen_weights["credit"][1]
            a, c, _ = blend_weights
            p_fit = StartProblem.build(_rows(batch, fit), st.bias, [clicked[j] for j in fit], st.tags)
            p_score = StartProblem.build(_rows(batch, score), st.bias, [clicked[j] for j in score], st.tags)
            t = tune_start(p_fit, {"log1p_count": a, "log1p_distinct_items": c}, KS)
            w = np.zeros(len(PHI_NAMES))
            w[:2] = (a, c)
            for name, (wb, ww) in (("half-blend", (1.0, w)), ("half-tuned", (t.w_bias, t.vector()))):
                for k, v in p_score.precision(wb, ww, KS).items():
                    sums[name][k] += v * p_score.users
            no_candidate = candidates.per_user(score_rows, blend_weights)  # the half-blend, user by user (tested)
            for cand, (ace, _) in chosen_weights.items():
                with_candidate = candidates.per_user(score_rows, ace, cand)
                row[f"{cand}_weights"].append(dict(zip(("a", "c", "e"), ace, strict=True)))
                for k, per_user in with_candidate.items():
                    sums[f"half-{cand}"][k] += float(np.sum(per_user))
                    gaps[cand][k].extend(np.subtract(per_user, no_candidate[k]).tolist())
            for k in KS:
                half_blend[k].update(zip(score_rows, no_candidate[k], strict=True))
            users += p_score.users
        for name, s in sums.items():
            row[name] = {k: v / max(users, 1) for k, v in s.items()}
        for cand in CANDIDATES:
            row[f"{cand}_gaps"] = gaps[cand]
        # the choices made on the training users against the half-blend, user by user (the users of
        # `problem`: the validation rows with a non-empty C, in order)
        with_c = [int(i) for j, i in enumerate(st.val_rows.tolist()) if clicked[j]]
        row["train_gaps"] = {}
        chosen = {"train-blend": (problem, train_weights), "train-count": (count_problem, count_weights)}
        for name, (on_val, weights) in chosen.items():
            mine = on_val.per_user(1.0, weights, KS)
            row["train_gaps"][name] = {
                k: [float(v) - half_blend[k][i] for v, i in zip(mine[k].tolist(), with_c, strict=True)] for k in KS
            }
        if truth is not None:
            # the planted interests first (a bonus far above every score), then the blend
            lookup = st.tags.lookup
            deltas = []
            for i in st.val_rows.tolist():
                ids = [lookup.get(t, Vocabulary.OOV) for t in truth.get(str(split.user_ids[i]), set())]
                ids_ = np.asarray([x for x in ids if x > Vocabulary.OOV], np.int64)
                deltas.append((ids_, np.full(len(ids_), 1e4, np.float32)))
            oracle = StartProblem.build(batch, st.bias, clicked, st.tags, deltas)
            row["oracle"] = oracle.precision(1.0, w_blend, KS)
        out.append(row)
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Users-weighted mean over folds of each starting point's Prec@k."""
    names = [n for n in STARTING_POINTS if rows and n in rows[0]]
    total = sum(r["val_users"] for r in rows) or 1
    return {n: {k: sum(r[n][k] * r["val_users"] for r in rows) / total for k in KS} for n in names}


def paired_gap(gaps: dict[int, list[float]]) -> dict[int, dict[str, float]]:
    """Per-user gaps by k -> their mean and a bootstrap 95% interval, for each k."""
    out = {}
    for k in KS:
        low, high = bootstrap_mean_ci(gaps[k])
        out[k] = {"mean": float(np.mean(gaps[k])) if gaps[k] else float("nan"), "low": low, "high": high}
    return out


def candidate_gap(rows: Sequence[dict[str, Any]], candidate: str = "credit") -> dict[int, dict[str, float]]:
    """half-<candidate> minus half-blend, paired per validation user over every fold."""
    return paired_gap({k: [g for r in rows for g in r[f"{candidate}_gaps"][k]] for k in KS})


def train_gaps(rows: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """train-blend and train-count minus half-blend, paired per validation user over every fold."""
    names = ("train-blend", "train-count")
    return {n: paired_gap({k: [g for r in rows for g in r["train_gaps"][n][k]] for k in KS}) for n in names}
