"""Row-sparse ("lazy") Adam for the large embedding tables of a training that only looks their rows up.

Dense Adam reads and writes every row of every table at every step (the weights, the gradient and
both moments), whichever rows the batch used; over a million tags that is most of an epoch
(docs/training.md). A table looked up by id can instead produce a sparse gradient
(`nn.Embedding(sparse=True)`), and `torch.optim.SparseAdam` then updates only the rows the batch
touched, with their moments, as large-vocabulary recommenders do. SparseAdam has no weight decay:
those tables are not decayed, and a row no batch touched keeps its value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def large_tables(model: nn.Module, min_rows: int) -> list[nn.Embedding]:
    """The trainable embedding tables of `model` with more than `min_rows` rows."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return [t for t in tables if t.weight.requires_grad and t.num_embeddings > min_rows]


@contextmanager
def row_sparse(tables: Sequence[nn.Embedding]) -> Iterator[None]:
    """Within the block, lookups in `tables` give sparse gradients; afterwards dense ones again."""
    before = [t.sparse for t in tables]
    for t in tables:
        t.sparse = True
    try:
        yield
    finally:
        for t, s in zip(tables, before, strict=True):
            t.sparse = s


class RowSparseAdam:
    """Adam over every parameter but the `tables`' weights, SparseAdam over those; one `step` for both."""

    def __init__(
        self, params: Iterable[torch.Tensor], tables: Sequence[nn.Embedding], lr: float, weight_decay: float
    ) -> None:
        sparse = {id(t.weight) for t in tables}
        dense = [p for p in params if id(p) not in sparse]
        self.optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)]
        if tables:
            self.optimizers.append(torch.optim.SparseAdam([t.weight for t in tables], lr=lr))

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()
