"""Row-sparse Adam: only the rows a batch looked up move, and the tables are sparse only where asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import utpm.training.history as history
from tests.datasets import synthetic_dataset
from utpm.data.protocol import split_protocol
from utpm.models.presets import get_preset
from utpm.training.history import HistoryTrainConfig, history_preset, train_history
from utpm.training.sparse_rows import RowSparseAdam, large_tables, row_sparse


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.big = nn.Embedding(10, 4, padding_idx=0)
        self.small = nn.Embedding(3, 4)
        self.w = nn.Linear(4, 1)


def _step(model: _Model, optim: RowSparseAdam, rows: list[int], sparse: list[nn.Embedding]) -> None:
    with row_sparse(sparse):
        x = model.big(torch.tensor(rows)) + model.small(torch.tensor([1] * len(rows)))
    optim.zero_grad()
    model.w(x).pow(2).sum().backward()
    optim.step()


def test_only_the_rows_a_batch_looked_up_move_and_their_first_step_is_adams() -> None:
    lazy, dense = _Model(), _Model()
    tables = large_tables(lazy, 5)
    assert tables == [lazy.big]
    lazy_optim = RowSparseAdam(lazy.parameters(), tables, lr=0.1, weight_decay=0.0)
    dense_optim = RowSparseAdam(dense.parameters(), [], lr=0.1, weight_decay=0.0)
    before = lazy.big.weight.detach().clone()
    _step(lazy, lazy_optim, [2, 3], tables)
    _step(dense, dense_optim, [2, 3], [])
    assert not lazy.big.sparse  # dense again outside the block
    moved = (lazy.big.weight != before).any(1)
    assert moved.tolist() == [False, False, True, True] + [False] * 6
    # step one: Adam's update of the touched rows, nothing elsewhere, in both
    assert torch.allclose(lazy.big.weight, dense.big.weight)
    assert torch.equal(lazy.small.weight, dense.small.weight)
    # step two elsewhere: dense Adam's momentum moves rows 2 and 3 again, the lazy update leaves them
    at_one = lazy.big.weight.detach().clone()
    _step(lazy, lazy_optim, [5], tables)
    _step(dense, dense_optim, [5], [])
    assert torch.equal(lazy.big.weight[2:4], at_one[2:4])
    assert not torch.allclose(dense.big.weight[2:4], at_one[2:4])


def test_large_tables_leave_frozen_ones_out() -> None:
    model = _Model()
    model.big.weight.requires_grad_(False)
    assert large_tables(model, 2) == [model.small]


@pytest.mark.parametrize("loss", ["sampled", "joint"])
def test_training_with_the_sampled_loss_updates_large_tables_row_by_row(
    loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every table counts as large (and softmax or bce would become sampled); joint scores every tag: dense
    monkeypatch.setattr(history, "FULL_SOFTMAX_MAX_TAGS", 0)
    split = split_protocol(synthetic_dataset(n_users=24, events=30, seed=2), seed=0)
    preset = history_preset(get_preset("tiny"), dim=8, max_values=6)
    losses = []
    for sparse in (True, False):
        # batches of 16 (6 steps): the two updates part from the third step on, when dense Adam's momentum
        # moves rows the batch did not touch; with 2 steps they differ only by float rounding, or not at all
        config = HistoryTrainConfig(
            preset=preset,
            epochs=1,
            loss=loss,
            sampled_negatives=5,
            keep_epoch_z=0.0,
            sparse_updates=sparse,
            batch_size=16,
        )
        result = train_history(split, config)
        assert not any(t.sparse for t in result.model.modules() if isinstance(t, nn.Embedding))
        losses.append(result.curve[1]["loss"])
    assert (losses[0] != losses[1]) == (loss == "sampled")
