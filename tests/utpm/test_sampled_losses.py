"""The sampled forms of the losses over every tag, used above FULL_SOFTMAX_MAX_TAGS tags."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
import torch

import utpm.training.history as history
from tests.datasets import synthetic_dataset
from utpm.data.protocol import split_protocol
from utpm.models.history import HistoryModel
from utpm.models.presets import get_preset
from utpm.training.history import HistoryTrainConfig, history_preset, train_history


class _FixedScores:
    """candidate_scores of a fixed (B, n_tags) score matrix: what `_sampled_bce_loss` reads of a model."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.scores, self.n_tags = scores, scores.shape[1]

    def candidate_scores(self, u: torch.Tensor, c: torch.Tensor, *_: object) -> torch.Tensor:
        return self.scores[:, c]


def test_the_sampled_bce_estimates_the_bce_over_every_tag() -> None:
    """Exact on the batch's labels and candidates, the other tags' terms from weighted draws of Q: the
    mean over many draws is the all-tag BCE (unbiased), each draw is not."""
    rng = np.random.default_rng(0)
    n_tags, b = 400, 4
    scores = torch.from_numpy(rng.normal(-3, 2, (b, n_tags)).astype(np.float32))
    rows, cols = torch.tensor([0, 0, 1, 2, 3]), torch.tensor([5, 9, 7, 300, 5])
    hid = torch.tensor([[5, 11, 0], [7, 0, 0], [300, 12, 13], [5, 0, 0]])
    hm = (hid > 0).float()
    q = (np.arange(n_tags) + 1.0) ** -0.5
    q[:2] = 0.0
    q /= q.sum()
    scale, offset = torch.tensor(1.5), torch.tensor(-1.0)
    exact = float(history._bce_loss(scores * scale + offset, rows, cols))
    model = cast(HistoryModel, _FixedScores(scores))
    draws = [
        float(history._sampled_bce_loss(model, scores, rows, cols, hid, hid, hm, q, 50, rng, scale, offset, None))
        for _ in range(3000)
    ]
    assert np.mean(draws) == pytest.approx(exact, rel=0.01)
    assert np.std(draws) > 0.01 * exact  # a draw is an estimate, not the sum
    # own labels left out of b_t: a change on a candidate moves its score, one elsewhere is ignored
    own = (torch.tensor([0, 1]), torch.tensor([11, 399]), torch.tensor([-5.0, -5.0]))
    moved = history._sampled_bce_loss(
        model, scores, rows, cols, hid, hid, hm, q, 1, np.random.default_rng(1), scale, offset, own
    )
    kept = history._sampled_bce_loss(
        model, scores, rows, cols, hid, hid, hm, q, 1, np.random.default_rng(1), scale, offset, None
    )
    assert float(moved) < float(kept)  # tag 11, a negative of row 0, scored lower


@pytest.mark.parametrize(
    ("asked", "trained"), [("bce", "sampled_bce"), ("softmax", "sampled"), ("sampled_bce", "sampled_bce")]
)
def test_above_the_threshold_each_all_tag_loss_trains_as_its_sampled_form(
    asked: str, trained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "FULL_SOFTMAX_MAX_TAGS", 0)
    split = split_protocol(synthetic_dataset(n_users=24, events=30, seed=2), seed=0)
    preset = history_preset(get_preset("tiny"), dim=8, max_values=6)
    config = HistoryTrainConfig(preset=preset, epochs=1, loss=asked, sampled_negatives=5, keep_epoch_z=0.0)
    result = train_history(split, config)
    assert result.loss == trained and np.isfinite(result.curve[1]["loss"])
