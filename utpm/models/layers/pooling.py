"""Average pooling within fields and concatenation across them: the YouTube DNN baseline's fusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn


class FusionOutput(NamedTuple):
    """What a fusion layer hands upwards.

    x: (B, D) the fused user vector fed to the cross layer (or straight to the tower);
    fields: (B, M, D_f) one fused vector per field (AutoInt's input);
    field_mask: (B, M) 1 for fields with at least one real value;
    field_weights: list over fields of (B, n, H_f), the weight of each value (rows sum to 1, or 0
    for an empty field); merge_weights: (B, n, M), the weight of each field. n = heads (1 here).
    """

    x: Tensor
    fields: Tensor
    field_mask: Tensor
    field_weights: list[Tensor]
    merge_weights: Tensor


def field_presence(masks: Sequence[Tensor]) -> Tensor:
    """masks[f]: (B, H_f) -> (B, M) float, 1 where field f has at least one real value."""
    return torch.stack([(m.sum(dim=-1) > 0).to(m.dtype) for m in masks], dim=-1)  # (B, M)


def mean_weights(mask: Tensor) -> Tensor:
    """mask (..., L) -> (..., L) uniform weights over the real positions; all zero if none is real."""
    return mask / mask.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (..., L)


class MeanPoolingFusion(nn.Module):
    """Masked mean within each field, concatenation across fields: x = [mean_1; ...; mean_M].

    The reported weights are the pooling weights (1/#real values within a field) and, across
    fields, 1/#non-empty fields: concatenation gives every field an equal say, and reporting it
    this way keeps `explain` uniform across models. Output D = M * E.
    """

    def __init__(self, n_fields: int, dim: int) -> None:
        super().__init__()
        self.n_fields = n_fields
        self.dim = dim
        self.out_dim = n_fields * dim
        self.field_dim = dim
        self.heads = 1

    def forward(self, embedded: Sequence[Tensor], masks: Sequence[Tensor]) -> FusionOutput:
        """embedded[f]: (B, H_f, E), masks[f]: (B, H_f)."""
        if len(embedded) != self.n_fields or len(masks) != self.n_fields:
            raise ValueError(f"expected {self.n_fields} fields, got {len(embedded)} embeddings, {len(masks)} masks")
        weights = [mean_weights(m).unsqueeze(1) for m in masks]  # each (B, 1, H_f)
        pooled = [(w @ e).squeeze(1) for w, e in zip(weights, embedded, strict=True)]  # each (B, E)
        fields = torch.stack(pooled, dim=1)  # (B, M, E)
        present = field_presence(masks)  # (B, M)
        merge = mean_weights(present).unsqueeze(1)  # (B, 1, M)
        x = fields.flatten(start_dim=1)  # (B, M*E)
        return FusionOutput(x, fields, present, weights, merge)
