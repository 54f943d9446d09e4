"""Attention-fusion layer (Eq. 1 and 2): multi-head attention within fields, then across fields.

Head h scores value i of a field with  s_i = q_h . act(W_{k,h}^T t_i + b_k),  softmax over the
field's real values, and sums  f_h = sum_i alpha_i t_i.  The same kind of unit then weighs the M
field vectors of head h into x_h. The heads' outputs are concatenated: x = [x_1; ...; x_n].

Sharing (the paper's key point): the query q_h is one parameter used by every field unit *and* the
merge unit, so one criterion of usefulness is learnt from all fields at once. W and b belong to
each unit. The bias is shared by a unit's heads, as Eq. 1 writes it (b_k, no head index).
`shared_query=False` gives `af1-unshared`: one query per unit (M + 1 of them).

Empty fields: a softmax over an all-masked row gives zeros (not NaN), so an empty field's vector
is zero, and the merge level masks it out too; with every field empty x is zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utpm.models.layers.pooling import FusionOutput, field_presence
from utpm.models.layers.tower import make_activation


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis counting only positions where mask > 0.

    scores (..., L), mask broadcastable to it -> (..., L); a row with no real position is all
    zero. Written without -inf (which would give NaN for such a row) and without data-dependent
    branches, so that it traces to ONNX.
    """
    real = mask > 0
    floor = torch.finfo(scores.dtype).min
    filled = torch.where(real, scores, torch.full_like(scores, floor))  # (..., L)
    # The max over real positions only: a large padded score must not underflow the real ones.
    top = filled.amax(dim=-1, keepdim=True).detach()  # (..., 1)
    exp = torch.exp(filled - top) * real.to(scores.dtype)  # (..., L)
    return exp / exp.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)  # (..., L)


class AttentionUnit(nn.Module):
    """One attention unit of Eq. 1-2 with `heads` heads; the query is passed in, not owned.

    Parameters: W (heads, E, key_dim) and b (key_dim,). Not owning q is what lets one query
    parameter serve every unit.
    """

    def __init__(self, dim: int, key_dim: int, heads: int, activation: str = "relu") -> None:
        super().__init__()
        self.dim, self.key_dim, self.heads = dim, key_dim, heads
        self.weight = nn.Parameter(torch.empty(heads, dim, key_dim))
        self.bias = nn.Parameter(torch.zeros(key_dim))
        self.act = make_activation(activation)
        for h in range(heads):
            nn.init.xavier_uniform_(self.weight[h])

    def scores(self, values: Tensor, query: Tensor) -> Tensor:
        """values (B, 1 or heads, L, E), query (heads, key_dim) -> raw scores (B, heads, L)."""
        if query.shape != (self.heads, self.key_dim):
            raise ValueError(f"query shape {tuple(query.shape)} != (heads, key_dim) = {(self.heads, self.key_dim)}")
        keys = self.act(values @ self.weight + self.bias)  # (B, heads, L, key_dim)
        return (keys @ query.unsqueeze(-1)).squeeze(-1)  # (B, heads, L)

    def forward(
        self, values: Tensor, mask: Tensor, query: Tensor, logit_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """values (B, 1 or heads, L, E): one set shared by the heads (within a field) or one per head
        (across fields); mask (B, L); query (heads, key_dim); logit_bias (B, 1 or heads, L) is added
        to the scores (the history model's log1p(count) term), None for the paper's Eq. 1.

        Returns pooled (B, heads, E) and weights (B, heads, L).
        """
        scores = self.scores(values, query)
        if logit_bias is not None:
            scores = scores + logit_bias
        weights = masked_softmax(scores, mask.unsqueeze(1))  # (B, heads, L)
        pooled = (weights.unsqueeze(-2) @ values).squeeze(-2)  # (B, heads, E)
        return pooled, weights


class AttentionFusion(nn.Module):
    """M field units and one merge unit; output x = concat over heads, D = heads * E.

    key_dim (T) is the attention space of the field units; merge_key_dim (F) that of the merge
    unit. A shared query needs them equal.
    """

    def __init__(
        self,
        n_fields: int,
        dim: int,
        heads: int,
        key_dim: int,
        merge_key_dim: int,
        activation: str = "relu",
        shared_query: bool = True,
    ) -> None:
        super().__init__()
        if n_fields < 1:
            raise ValueError(f"attention fusion needs at least 1 field, got {n_fields}")
        if heads < 1:
            raise ValueError(f"attention fusion needs at least 1 head, got {heads}")
        if shared_query and key_dim != merge_key_dim:
            raise ValueError(
                f"a shared query serves both levels, so T (field attention space, {key_dim}) must equal "
                f"F (merge attention space, {merge_key_dim})"
            )
        self.n_fields, self.dim, self.heads = n_fields, dim, heads
        self.shared_query = shared_query
        self.out_dim = heads * dim
        self.field_dim = heads * dim
        self.field_units = nn.ModuleList(AttentionUnit(dim, key_dim, heads, activation) for _ in range(n_fields))
        self.merge_unit = AttentionUnit(dim, merge_key_dim, heads, activation)
        # Registered as a Parameter only once (shared) or once per unit (unshared), so that
        # parameters() and state_dict() list exactly the distinct queries.
        self.query: nn.Parameter | None = None
        self.queries: nn.ParameterList | None = None
        if shared_query:
            self.query = nn.Parameter(torch.randn(heads, key_dim) * key_dim**-0.5)
        else:
            dims = [key_dim] * n_fields + [merge_key_dim]
            self.queries = nn.ParameterList(nn.Parameter(torch.randn(heads, d) * d**-0.5) for d in dims)

    def unit_query(self, unit: int) -> Tensor:
        """The query of unit `unit`: 0..M-1 are the field units, M the merge unit."""
        if not 0 <= unit <= self.n_fields:
            raise ValueError(f"unit index must be in [0, {self.n_fields}], got {unit}")
        if self.query is not None:
            return self.query
        if self.queries is None:  # unreachable: __init__ sets one of the two
            raise RuntimeError("attention fusion has no query")
        return self.queries[unit]

    def forward(
        self, embedded: Sequence[Tensor], masks: Sequence[Tensor], logit_bias: Sequence[Tensor] | None = None
    ) -> FusionOutput:
        """embedded[f]: (B, H_f, E), masks[f]: (B, H_f); logit_bias[f] (B, 1 or heads, H_f) optional."""
        if len(embedded) != self.n_fields or len(masks) != self.n_fields:
            raise ValueError(f"expected {self.n_fields} fields, got {len(embedded)} embeddings, {len(masks)} masks")
        pooled: list[Tensor] = []
        field_weights: list[Tensor] = []
        for f, unit in enumerate(self.field_units):
            bias = logit_bias[f] if logit_bias is not None else None
            p, w = unit(embedded[f].unsqueeze(1), masks[f], self.unit_query(f), bias)  # (B, n, E), (B, n, H_f)
            pooled.append(p)
            field_weights.append(w)
        per_head = torch.stack(pooled, dim=2)  # (B, n, M, E)
        present = field_presence(masks)  # (B, M)
        x, merge_weights = self.merge_unit(per_head, present, self.unit_query(self.n_fields))  # (B, n, E), (B, n, M)
        fields = per_head.transpose(1, 2).flatten(start_dim=2)  # (B, M, n*E)
        return FusionOutput(x.flatten(start_dim=1), fields, present, field_weights, merge_weights)  # x: (B, n*E)
