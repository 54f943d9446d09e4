"""`utpm-hist`: UTPM + a history ("copy") path + count-aware fields, the project's default model.

The paper's model scores a tag by u . t only, from a 16-dimensional user vector pooled over the 10
most recent distinct values of each field; nothing lets it say "more of what this user clicked".
This model keeps UTPM's user tower (attention fusion, two FC layers; the cross layer optional, off) and adds:

1. counts: a field carries (value, count) pairs, the H most frequent values; `counts=True` adds
   w_h * log1p(count) to the attention logit of Eq. 1 (one learned w per head, starting at 1);
2. a history path: s(u, t) = u . o_t + b_t + g(phi_ut), where phi_ut are per-(user, tag) features
   (`utpm.features.history.PHI_NAMES`) and g a small MLP shared by all tags, so it needs no per-tag
   data and works for rare tags and at 1M tags (`history=True`);
3. one tag vocabulary for the clicked-tags input field and the output; `tie=True` makes the output
   table the input embedding of the tag field (projected when E != U).

Every part can be switched off for an ablation; with all three off it is UTPM plus a tag bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from utpm.features.history import PHI_NAMES, TAG_FIELD
from utpm.features.item_neighbours import RECENT_ITEMS
from utpm.features.spec import FieldSpec
from utpm.models.presets import Preset
from utpm.models.user_model import Architecture, CrossKind, UserModel, check_cross

HISTORY_MODEL = "utpm-hist"


@dataclass(frozen=True)
class HistoryOptions:
    """The parts of `utpm-hist` (each can be switched off) and its sizes."""

    counts: bool = True
    history: bool = True
    tie: bool = False
    # False drops u . o_t (an ablation: tag bias plus history path only)
    tower: bool = True
    # no crossed values: they were most of the weights and the cost and gained nothing on validation
    # (docs/results.md, "An ablation: the tower's cross layer")
    cross: CrossKind = "none"
    g_hidden: int = 32
    # history tags scored per user (most frequent first): above every history of the data sets here,
    # so that no history tag loses its history part
    max_history_tags: int = 1000
    # tag->tag transitions, repeat propensity and label rate learnt from training users as features
    # of g (`utpm.features.history.TagStats`), and the candidates they propose beyond the history
    transitions: bool = True
    neighbours: int = 50
    extra_candidates: int = 100
    shrinkage: float = 10.0
    # each clicked item's nearest items by co-clicks (`utpm.features.item_neighbours`): the phi feature
    # `item_neighbour_score` and up to `item_candidates` candidate tags from a request's `clicked_items`;
    # 0 neighbours: off
    item_neighbours: int = 50
    item_candidates: int = 100
    # a user's most recent distinct clicked items that are read, in training as in serving (0: all)
    recent_items: int = RECENT_ITEMS
    # True: the history fields count every tag of a clicked (or unclicked) item, as a request built from
    # the user's events carries them; False: an item's first N, the ones C takes (chosen on validation
    # users: docs/results.md, "Every tag of an item")
    all_item_tags: bool = False
    # False: phi's log1p_distinct_items takes the tag's count instead of its distinct items (an
    # ablation: what telling two clicks of one item from clicks of two adds)
    distinct_items: bool = True

    def __post_init__(self) -> None:
        check_cross(self.cross)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryOptions:
        # options saved before `cross` was one had the paper's layer
        d = {"cross": "cf", **d}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class HistoryPath(nn.Module):
    """g(phi) = w . phi + MLP(phi): a linear part (which can start at the tuned blend yardstick) plus a
    small MLP for what is not linear in the features; the MLP's last layer starts at zero."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1, bias=False)
        out = nn.Linear(hidden, 1)
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def forward(self, phi: Tensor) -> Tensor:
        """phi (..., P) -> (..., 1)."""
        return self.linear(phi) + self.mlp(phi)


class HistoryModel(nn.Module):
    """UTPM's tower plus tag bias and history path; scores (B, n_tags) for B users."""

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        n_tags: int,
        preset: Preset,
        options: HistoryOptions,
        name: str = HISTORY_MODEL,
    ) -> None:
        super().__init__()
        self.name = name
        self.options = options
        self.preset = preset
        self.specs = list(specs)
        self.n_tags = n_tags
        self.base = UserModel(name, self.specs, n_tags, preset, Architecture(cross=options.cross))
        self.tag_bias = nn.Parameter(torch.zeros(n_tags))
        names = [s.name for s in self.specs]
        self.tag_field = names.index(TAG_FIELD) if TAG_FIELD in names else -1
        if options.tie:
            if self.tag_field < 0 or self.specs[self.tag_field].vocab_size != n_tags:
                raise ValueError(f"tie=True needs a {TAG_FIELD!r} field over the {n_tags} output tags")
            self.tie_proj: nn.Module = nn.Identity() if preset.E == preset.U else nn.Linear(preset.E, preset.U, False)
        self.count_weight = nn.Parameter(torch.ones(self.base.heads)) if options.counts else None
        self.g = HistoryPath(len(PHI_NAMES), options.g_hidden) if options.history else None

    def start_at(self, tag_bias: Tensor, weights: dict[str, float]) -> None:
        """Start exactly at a hand-made scorer: b_t = tag_bias, the history path's linear part =
        `weights` (by `PHI_NAMES`), tag embeddings zero (u . o_t = 0; their gradient u is not)."""
        with torch.no_grad():
            self.tag_bias.copy_(tag_bias)
            if self.g is not None:
                for name, w in weights.items():
                    self.g.linear.weight[0, PHI_NAMES.index(name)] = w
            if not self.options.tie:
                self.base.tag_embedding.weight.zero_()

    def user_vector(
        self, ids: Sequence[Tensor], masks: Sequence[Tensor], counts: Sequence[Tensor]
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """-> u (B, U), field weights (list of (B, heads, H_f)), merge weights (B, heads, M)."""
        base = self.base
        embedded = base.embedding(list(ids))
        bias = None
        if self.count_weight is not None:
            w = self.count_weight.view(1, -1, 1)
            bias = [w * torch.log1p(c.clamp_min(0.0)).unsqueeze(1) for c in counts]  # (B, heads, H_f)
        fused = base.fusion(embedded, list(masks), bias)
        z = base.cross(fused.x, fused.fields, fused.field_mask)
        return base.tower(z), fused.field_weights, fused.merge_weights

    def output_table(self) -> Tensor:
        """o (n_tags, U): the tag embeddings scored against u."""
        if self.options.tie:
            return self.tie_proj(self.base.embedding.tables[self.tag_field].weight)
        return self.base.tag_embedding.weight

    def output_rows(self, ids: Tensor) -> Tensor:
        """o_t (len(ids), U) of the tags `ids`, looked up, so that a table set to sparse gets a sparse gradient."""
        if not self.options.tie:
            return self.base.tag_embedding(ids)
        table = self.base.embedding.tables[self.tag_field]
        return self.tie_proj(table(ids)) if table.sparse else self.output_table()[ids]

    def history_scores(self, hist_feats: Tensor, hist_mask: Tensor) -> Tensor:
        """g(phi) (B, Hh), 0 where padded or without a history path."""
        if self.g is None:
            return torch.zeros_like(hist_mask)
        return self.g(hist_feats).squeeze(-1) * hist_mask

    def model_scores(self, u: Tensor) -> Tensor:
        """u . o_t + b_t for every tag: (B, n_tags)."""
        if not self.options.tower:
            return (u[:, :1] * 0.0) + self.tag_bias
        if torch.is_grad_enabled():
            return u @ self.output_table().T + self.tag_bias
        # without autograd (a ranking over every tag) the same sums in place: one (B, n_tags) buffer, not two
        return (u @ self.output_table().T).add_(self.tag_bias)

    def scores(
        self,
        ids: Sequence[Tensor],
        masks: Sequence[Tensor],
        counts: Sequence[Tensor],
        hist_ids: Tensor,
        hist_feats: Tensor,
        hist_mask: Tensor,
    ) -> Tensor:
        """Final scores s(u, t) (B, n_tags): model part plus the history part scattered onto history tags."""
        u = self.user_vector(ids, masks, counts)[0]
        s = self.model_scores(u)
        h = self.history_scores(hist_feats, hist_mask)
        return s.scatter_add(1, hist_ids, h) if torch.is_grad_enabled() else s.scatter_add_(1, hist_ids, h)

    def forward(
        self,
        ids: list[Tensor],
        masks: list[Tensor],
        counts: list[Tensor],
        hist_ids: Tensor,
        hist_feats: Tensor,
        hist_mask: Tensor,
    ) -> Tensor:
        return self.scores(ids, masks, counts, hist_ids, hist_feats, hist_mask)

    def candidate_scores(
        self, u: Tensor, candidates: Tensor, hist_ids: Tensor, hist_feats: Tensor, hist_mask: Tensor
    ) -> Tensor:
        """Scores of `candidates` (C,) tag ids only: (B, C), history part added where a history tag is a candidate."""
        s = u @ self.output_rows(candidates).T * float(self.options.tower) + self.tag_bias[candidates]
        pos = torch.full((self.n_tags,), -1, dtype=torch.long, device=u.device)
        pos[candidates] = torch.arange(len(candidates), device=u.device)
        where = pos[hist_ids]  # (B, Hh), -1 when not a candidate
        h = self.history_scores(hist_feats, hist_mask) * (where >= 0)
        return s.scatter_add(1, where.clamp_min(0), h)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_tags={self.n_tags}, options={self.options}"


def build_history_model(
    specs: Sequence[FieldSpec], n_tags: int, preset: Preset, options: HistoryOptions, seed: int | None = None
) -> HistoryModel:
    """A `utpm-hist` model; with a seed the initial weights depend only on it (the global RNG is restored)."""
    if seed is None:
        return HistoryModel(specs, n_tags, preset, options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HistoryModel(specs, n_tags, preset, options)
