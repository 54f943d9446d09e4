"""`utpm bench start`: how the default model's starting points do on validation users only.

For each fold of `utpm experiment --folds` (the same splits, the same validation users, no test user
is read), the linear scorers the model can start from, scored on the fold's validation users:

- `blend`: the blend start (a, c tuned on the validation users: in-sample for it);
- `tuned`: the default start, tuned on the training examples (`tune_linear_start`), before the
  validation gate of `train_history`;
- `half-blend` / `half-tuned`: the validation users split in two; on each half, the blend's a, c and
  a tuned start both chosen on the other half, so both are out of sample: what tuning a dozen weights
  on validation users alone would give;
- `oracle` (with the data's `truth.csv`, the synthetic data's planted interests): the user's planted
  interests first, in the blend's order, then the blend: what knowing the interests adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utpm.data.loading import load_dataset
from utpm.evaluation.yardsticks import tune_blend
from utpm.features.history import PHI_NAMES, HistoryBatch
from utpm.features.vocab import Vocabulary

KS = (1, 2, 3)


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
    data_path: str | Path, preset: str, folds: int, fold_seeds: Sequence[int], truth: dict[str, set[str]] | None
) -> list[dict[str, Any]]:
    """One row per fold: Prec@1/2/3 of each starting point on that fold's validation users."""
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
        row: dict[str, Any] = {
            "fold": seed,
            "val_users": problem.users,
            "blend_weights": list(st.blend[:2]),
            "popularity": st.blend.popularity,
            "tuned": {"w_bias": tuned.w_bias, "weights": {k: v for k, v in tuned.weights.items() if v}},
            "blend": problem.precision(1.0, w_blend, KS),
            "tuned_start": problem.precision(tuned.w_bias, tuned.vector(), KS),
        }
        # out of sample on validation: tune on one half, score on the other
        halves = np.array_split(np.random.default_rng(seed).permutation(len(st.val_rows)), 2)
        sums = {"half-blend": dict.fromkeys(KS, 0.0), "half-tuned": dict.fromkeys(KS, 0.0)}
        users = 0
        for h in (0, 1):
            fit, score = np.sort(halves[h]), np.sort(halves[1 - h])
            # the half's a, c over the fold's b_t (st.bias counts what the whole fold's blend chose)
            a, c, _ = tune_blend(split, st.train_rows, st.val_rows[fit], n, KS)
            p_fit = StartProblem.build(_rows(batch, fit), st.bias, [clicked[j] for j in fit], st.tags)
            p_score = StartProblem.build(_rows(batch, score), st.bias, [clicked[j] for j in score], st.tags)
            t = tune_start(p_fit, {"log1p_count": a, "log1p_distinct_items": c}, KS)
            w = np.zeros(len(PHI_NAMES))
            w[:2] = (a, c)
            for name, (wb, ww) in (("half-blend", (1.0, w)), ("half-tuned", (t.w_bias, t.vector()))):
                for k, v in p_score.precision(wb, ww, KS).items():
                    sums[name][k] += v * p_score.users
            users += p_score.users
        for name, s in sums.items():
            row[name] = {k: v / max(users, 1) for k, v in s.items()}
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
    names = [n for n in ("blend", "tuned_start", "half-blend", "half-tuned", "oracle") if rows and n in rows[0]]
    total = sum(r["val_users"] for r in rows) or 1
    return {n: {k: sum(r[n][k] * r["val_users"] for r in rows) / total for k in KS} for n in names}
