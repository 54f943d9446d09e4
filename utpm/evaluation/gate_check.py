"""`utpm bench gate`: should a trained epoch replace the default model's start on a hundred users' say?

The default model keeps an epoch only if it beats its start on the validation users. On small data
(a hundred validation users: one user is 0.01 of Prec@1) the best of several epochs beats the start
by noise alone. `HistoryTrainConfig.keep_epoch_z` asks for a paired gain of at least z standard
errors instead. This check decides z on validation users only: each fold of `utpm experiment
--folds` is trained as the experiment trains it, and its validation users are split in two; on each
half the epoch is chosen (the best mean, as the early stopping does; then the gate of each z) and
the choice is scored on the other half, paired per user against the ungated choice, with a
bootstrap 95% interval. No test user is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utpm.evaluation.personalisation import bootstrap_mean_ci

KS = (1, 2, 3)
GATE_ZS = (1.0, 1.645, 2.326)


def choose_epoch(scores: np.ndarray, users: np.ndarray, z: float = 0.0) -> int:
    """The epoch (row of `scores`, epochs x users; row 0 the start) with the best mean over `users`
    (ties to the earlier, as the early stopping); with z > 0 the start unless that epoch's paired
    gain over it is at least z standard errors above zero (`epoch_beats_start`)."""
    from utpm.training.history import epoch_beats_start

    means = scores[:, users].mean(axis=1)
    best = int(np.argmax(means))  # the first of equal means
    if best > 0 and z > 0 and not epoch_beats_start(scores[best, users] - scores[0, users], z):
        return 0
    return best


def gate_halves(scores: np.ndarray, seed: int, zs: Sequence[float] = GATE_ZS) -> dict[str, Any]:
    """Per half of the validation users (seeded split): the epoch each rule chooses on it, and each
    rule's per-user score on the other half, and its gap to the ungated choice there."""
    halves = np.array_split(np.random.default_rng(seed).permutation(scores.shape[1]), 2)
    rules = {"ungated": 0.0, **{f"z={z:g}": z for z in zs}}
    chosen: dict[str, list[int]] = {name: [] for name in rules}
    held_out: dict[str, list[float]] = {name: [] for name in [*rules, "start"]}
    gaps: dict[str, list[float]] = {name: [] for name in rules if name != "ungated"}
    for h in (0, 1):
        fit, score = np.sort(halves[h]), np.sort(halves[1 - h])
        held_out["start"].extend(scores[0, score].tolist())
        epochs = {name: choose_epoch(scores, fit, z) for name, z in rules.items()}
        for name, epoch in epochs.items():
            chosen[name].append(epoch)
            held_out[name].extend(scores[epoch, score].tolist())
            if name in gaps:
                gaps[name].extend((scores[epoch, score] - scores[epochs["ungated"], score]).tolist())
    return {"chosen": chosen, "held_out": held_out, "gaps": gaps}


def check_gate(
    data_path: str | Path, preset: str, folds: int, fold_seeds: Sequence[int], epochs: int, progress: Any = None
) -> list[dict[str, Any]]:
    """One row per fold: the default model trained as `utpm experiment --models default` trains it
    (gate off), its validation users' scores per epoch, and `gate_halves` over them."""
    from utpm.evaluation.experiment import DEFAULT_MODEL, Job, experiment_dataset, history_config, make_split
    from utpm.training.history import DEFAULT_HISTORY_LOSS, train_history

    data = experiment_dataset(str(data_path))
    out = []
    for seed in fold_seeds:
        job = Job(DEFAULT_MODEL, DEFAULT_HISTORY_LOSS, seed, preset, (("keep_epoch_z", 0.0),), epochs, folds)
        result = train_history(make_split(data, seed, folds), history_config(job, KS))
        scores = result.val_user_scores
        if scores is None or scores.shape[1] < 2:
            raise ValueError(f"fold {seed}: fewer than two validation users with clicked tags to split")
        row = {
            "fold": seed,
            "val_users": int(scores.shape[1]),
            "epochs_run": int(scores.shape[0] - 1),
            "best_epoch": result.best_epoch_ungated,
            "start": result.start.get("kind"),
            "val_means": scores.mean(axis=1).tolist(),
            **gate_halves(scores, seed),
        }
        out.append(row)
        if progress is not None:
            progress(row)
    return out


def summarise_gate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled over folds and halves: each rule's mean held-out score, its paired gap to the ungated
    choice with a bootstrap 95% interval, and in how many halves it kept the start."""
    names = list(rows[0]["held_out"]) if rows else []
    mean = {n: float(np.mean([v for r in rows for v in r["held_out"][n]])) for n in names}
    gap = {}
    for n in rows[0]["gaps"] if rows else []:
        values = [v for r in rows for v in r["gaps"][n]]
        low, high = bootstrap_mean_ci(values)
        gap[n] = {"mean": float(np.mean(values)), "low": low, "high": high}
    starts = {n: sum(e == 0 for r in rows for e in r["chosen"][n]) for n in rows[0]["chosen"]} if rows else {}
    return {"held_out_mean": mean, "gap_to_ungated": gap, "halves_keeping_start": starts, "halves": 2 * len(rows)}
