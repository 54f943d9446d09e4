"""Feature-input layer: one embedding table per field (the bottom of the paper's Figure 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utpm.features.spec import FieldSpec


class FieldEmbedding(nn.Module):
    """Looks up every field's ids in its own table of dimension E.

    Id 0 is padding: its row is zero and gets no gradient (`padding_idx=0`). The masks, not the
    zero row, decide which positions count: padded positions may hold any id (the tests put random
    ones there) and every layer above multiplies by the mask.
    """

    def __init__(self, specs: Sequence[FieldSpec], dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dimension must be >= 1, got {dim}")
        self.dim = dim
        tables = [nn.Embedding(s.vocab_size, dim, padding_idx=0) for s in specs]
        for table in tables:
            # N(0, 1/E) keeps |t| near 1 whatever E is, so the CF layer's products x_i x_j stay O(1).
            nn.init.normal_(table.weight, std=dim**-0.5)
            with torch.no_grad():
                table.weight[0].zero_()
        self.tables = nn.ModuleList(tables)

    def forward(self, ids: Sequence[Tensor]) -> list[Tensor]:
        """ids[f]: (B, H_f) int64 -> list over fields of (B, H_f, E)."""
        if len(ids) != len(self.tables):
            raise ValueError(f"expected {len(self.tables)} id tensors (one per field), got {len(ids)}")
        return [table(i) for table, i in zip(self.tables, ids, strict=True)]  # each (B, H_f, E)
