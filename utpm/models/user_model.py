"""UserModel: the paper's Figure 2 as named parts, and the blueprint that picks each part.

    ids, masks -> FieldEmbedding -> fusion (AttentionFusion | MeanPoolingFusion)
               -> cross (CrossFeature | AFM | NFM | DCN | AutoInt | none) -> Tower -> u (B, U)

and, for the predicting layer, a tag embedding table t (n_tags, U) scored against u by inner
product. Every model of the zoo is this class with a different `Architecture`; `registry.py`
names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from utpm.features.spec import FieldSpec
from utpm.models.layers.attention import AttentionFusion
from utpm.models.layers.cross import AFMCross, AutoIntCross, CrossFeature, DCNCross, NFMCross, NoCross
from utpm.models.layers.embedding import FieldEmbedding
from utpm.models.layers.pooling import MeanPoolingFusion
from utpm.models.layers.tower import Tower
from utpm.models.presets import Preset

FusionKind = Literal["mean", "attention"]
CrossKind = Literal["none", "cf", "afm", "nfm", "dcn", "autoint"]


@dataclass(frozen=True)
class Architecture:
    """Which part fills each slot.

    heads None means `preset.heads` (so the hyper-parameter study over heads runs on the
    af2 family and utpm); an int fixes it (the af1 models). Ignored by mean pooling (1 "head").
    """

    fusion: FusionKind = "attention"
    heads: int | None = None
    shared_query: bool = True
    cross: CrossKind = "cf"


def check_cross(kind: str) -> None:
    """ValueError naming the valid cross layers unless `kind` is one."""
    if kind not in get_args(CrossKind):
        raise ValueError(f"unknown cross layer {kind!r}; valid: {', '.join(get_args(CrossKind))}")


def _build_cross(kind: CrossKind, dim: int, n_fields: int, field_dim: int, heads: int, preset: Preset) -> nn.Module:
    check_cross(kind)
    if kind == "none":
        return NoCross(dim)
    if kind == "cf":
        return CrossFeature(dim, preset.C)
    if kind == "afm":
        return AFMCross(dim, preset.C, attn_dim=preset.T)
    if kind == "nfm":
        return NFMCross(dim, preset.C)
    if kind == "dcn":
        return DCNCross(dim, layers=2)
    return AutoIntCross(dim, n_fields, field_dim, head_dim=preset.T, heads=heads, layers=2)


class UserModel(nn.Module):
    """A user-tag profiling model: user features -> user embedding u, scored against tag embeddings.

    Inputs, in the order of `specs`: ids[f] (B, H_f) int64 (0 = padding) and masks[f] (B, H_f)
    float32 (1 = real value). H_f is usually `specs[f].max_len` but any length works: only the
    mask says which positions count.
    """

    def __init__(self, name: str, specs: Sequence[FieldSpec], n_tags: int, preset: Preset, arch: Architecture) -> None:
        super().__init__()
        specs = list(specs)
        if not specs:
            raise ValueError("a user model needs at least 1 field, got 0")
        if n_tags < 2:
            raise ValueError(f"n_tags counts the padding row 0, so it must be >= 2, got {n_tags}")
        self.name = name
        self.specs = specs
        self.preset = preset
        self.arch = arch
        self.n_tags = n_tags
        m, e = len(specs), preset.E

        self.embedding = FieldEmbedding(specs, e)
        self.fusion: AttentionFusion | MeanPoolingFusion
        if arch.fusion == "attention":
            heads = arch.heads if arch.heads is not None else preset.heads
            self.fusion = AttentionFusion(
                m,
                e,
                heads,
                key_dim=preset.T,
                merge_key_dim=preset.F,
                activation=preset.activation,
                shared_query=arch.shared_query,
            )
        elif arch.fusion == "mean":
            self.fusion = MeanPoolingFusion(m, e)
        else:
            raise ValueError(f"unknown fusion {arch.fusion!r}; valid: 'attention', 'mean'")
        self.heads = self.fusion.heads
        self.cross = _build_cross(arch.cross, self.fusion.out_dim, m, self.fusion.field_dim, self.heads, preset)
        cross_dim: int = self.cross.out_dim  # type: ignore[assignment]
        self.tower = Tower(cross_dim, preset.fc_hidden, preset.U, preset.activation)
        self.tag_embedding = nn.Embedding(n_tags, preset.U, padding_idx=0)
        nn.init.normal_(self.tag_embedding.weight, std=preset.U**-0.5)
        with torch.no_grad():
            self.tag_embedding.weight[0].zero_()

    @property
    def field_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def forward_with_attention(self, ids: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, list[Tensor], Tensor]:
        """-> (u (B, U), field weights: list over fields of (B, heads, H_f), merge weights (B, heads, M)).

        Weight rows sum to 1, or to 0 for an empty field (and at merge level when every field is
        empty). No data-dependent Python control flow: traceable by torch.onnx.export.
        """
        if len(ids) != len(self.specs) or len(masks) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} fields, got {len(ids)} id and {len(masks)} mask tensors")
        embedded = self.embedding(ids)  # list of (B, H_f, E)
        fused = self.fusion(embedded, masks)  # x (B, D)
        z = self.cross(fused.x, fused.fields, fused.field_mask)  # (B, cross_dim)
        u = self.tower(z)  # (B, U)
        return u, fused.field_weights, fused.merge_weights

    def forward(self, ids: list[Tensor], masks: list[Tensor]) -> Tensor:
        """ids[f] (B, H_f) int64, masks[f] (B, H_f) float32 -> u (B, U)."""
        return self.forward_with_attention(ids, masks)[0]

    def tag_logits(self, u: Tensor, item_tags: Tensor, item_tag_mask: Tensor) -> Tensor:
        """u (B, U), item_tags (B, K, N) int64, item_tag_mask (B, K, N) -> u . t_i (B, K, N), 0 where padded."""
        t = self.tag_embedding(item_tags)  # (B, K, N, U)
        scores = (t @ u[:, None, :, None]).squeeze(-1)  # (B, K, N)
        return scores * item_tag_mask.to(scores.dtype)  # (B, K, N)

    def item_logits(self, u: Tensor, item_tags: Tensor, item_tag_mask: Tensor) -> Tensor:
        """Joint logits of Eq. 4: sum over an item's real tags of u . t_i -> (B, K)."""
        return self.tag_logits(u, item_tags, item_tag_mask).sum(dim=-1)  # (B, K)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fields={len(self.specs)}, n_tags={self.n_tags}, preset={self.preset.name!r}"
