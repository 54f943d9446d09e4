"""The epoch gate (`keep_epoch_z`): a trained epoch replaces the start only on a clear paired gain,
and `utpm bench gate`, which chooses z on validation users only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.datasets import synthetic_dataset
from utpm.data.protocol import split_protocol
from utpm.evaluation.gate_check import choose_epoch, gate_halves, summarise_gate
from utpm.evaluation.metrics import precision_at_k
from utpm.models.history import HistoryModel
from utpm.models.presets import get_preset
from utpm.training.history import (
    HistoryTrainConfig,
    encode_users,
    epoch_beats_start,
    history_preset,
    prepare_history,
    rank_history,
    train_history,
)

TINY_HIST = history_preset(get_preset("tiny"), dim=8, max_values=6)


def test_a_gain_counts_only_when_it_is_z_standard_errors_above_zero() -> None:
    rng = np.random.default_rng(0)
    clear = 0.1 + 0.05 * rng.standard_normal(100)  # mean 0.1, standard error 0.005
    noise = rng.choice([-1.0, 0.0, 1.0], 100) / 3  # mean near 0, standard error ~0.027
    assert epoch_beats_start(clear, 1.645) and epoch_beats_start(clear, 10.0)
    assert not epoch_beats_start(clear, 25.0)
    gain = float(noise.mean())
    se = float(noise.std(ddof=1)) / 10
    assert epoch_beats_start(noise, 0.5 * gain / se) == (gain > 0)
    assert not epoch_beats_start(noise, abs(gain) / se + 0.01)
    assert not epoch_beats_start(np.zeros(50), 1.0)  # no change is no gain
    assert epoch_beats_start(np.full(50, 0.01), 1.0)  # the same gain for everyone: no spread, a gain


def test_the_best_epoch_ties_to_the_earlier_and_the_gate_falls_back_to_the_start() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.9], [0.5, 0.5, 0.5, 0.9], [0.9, 0.9, 0.9, 0.9]])
    users = np.arange(4)
    assert choose_epoch(scores, users) == 3
    assert choose_epoch(scores, np.array([3])) == 1  # epochs 1-3 tie for user 3: the earliest
    assert choose_epoch(scores, users, z=100.0) == 3  # every user gains 0.4: no spread
    noisy = np.array([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]])  # one user more in four, one less
    assert choose_epoch(noisy, users) == 1 and choose_epoch(noisy, users, z=1.0) == 0


def test_each_half_chooses_and_is_scored_on_the_other_half_paired_with_the_ungated_choice() -> None:
    rng = np.random.default_rng(1)
    start = rng.random(200)
    scores = np.stack([start, start + rng.normal(0, 0.3, 200), start + 0.2])  # epoch 1 noise, epoch 2 a real gain
    out = gate_halves(scores, seed=3, zs=(1.645,))
    assert out["chosen"]["ungated"] == [2, 2] and out["chosen"]["z=1.645"] == [2, 2]
    assert np.allclose(out["gaps"]["z=1.645"], 0.0)
    noise_only = gate_halves(scores[:2], seed=3, zs=(1.645,))
    held = noise_only["held_out"]
    gaps = np.asarray(noise_only["gaps"]["z=1.645"])
    assert len(gaps) == len(held["start"]) == 200  # every validation user scored once, in the other half
    assert gaps.mean() == pytest.approx(np.mean(held["z=1.645"]) - np.mean(held["ungated"]))
    summary = summarise_gate([{"fold": 0, **noise_only}])
    assert summary["halves"] == 2 and summary["gap_to_ungated"]["z=1.645"]["mean"] == pytest.approx(gaps.mean())
    assert summary["halves_keeping_start"]["z=1.645"] >= summary["halves_keeping_start"]["ungated"]


def test_training_records_each_validation_users_score_and_the_gate_keeps_the_start_on_too_small_a_gain() -> None:
    # a start at popularity alone (no blend), from which training gains a lot on the validation users
    split = split_protocol(synthetic_dataset(n_users=60, events=40, seed=2), seed=0)
    runs = {}
    for z in (0.0, 1.645, 1e9):
        config = HistoryTrainConfig(
            preset=TINY_HIST,
            epochs=3,
            augment_cuts=(0.5,),
            start="blend",
            start_at_blend=False,
            lr=1e-2,
            keep_epoch_z=z,
        )
        runs[z] = train_history(split, config)
    free, clear, gated = runs[0.0], runs[1.645], runs[1e9]
    scores = free.val_user_scores
    assert scores is not None and scores.shape[0] == len(free.curve)
    # row e is epoch e's per-user score, whose mean is the early stopping's score of that epoch
    assert np.allclose(scores.mean(axis=1), [p["val_score"] for p in free.curve])
    assert free.best_epoch > 0 and scores[free.best_epoch].mean() > scores[0].mean() + 0.3
    for run in (clear, gated):  # the gate does not change training, only which weights are kept
        assert run.val_user_scores is not None and np.array_equal(scores, run.val_user_scores)
        assert run.best_epoch_ungated == free.best_epoch
    assert clear.best_epoch == free.best_epoch and clear.val == free.val  # a clear gain passes at 1.645
    assert gated.best_epoch == 0 and gated.val[1] == pytest.approx(free.curve[0]["val_prec@1"])
    a, b = dict(free.model.named_parameters()), dict(gated.model.named_parameters())
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the start's weights, not the trained ones
    # the run's validation figures are its kept epoch's, not re-ranked: the same as ranking the
    # validation users again with the kept weights (free keeps a trained epoch, gated the start)
    setup = prepare_history(split, config)
    val_batch = encode_users(setup.seqs, setup.henc, setup.val_rows)
    clicked = [split.clicked_tags(int(i), TINY_HIST.N) for i in setup.val_rows]
    for run in (free, gated):
        assert isinstance(run.model, HistoryModel)
        ranked = rank_history(run.model, val_batch, setup.tags, 3)
        assert run.val == {k: precision_at_k(ranked, clicked, k).value for k in (1, 2, 3)}
