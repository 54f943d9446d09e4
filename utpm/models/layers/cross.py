"""Cross-feature layers: UTPM's CF (Eq. 3) and the baselines that replace it (AFM, NFM, DCN, AutoInt).

Every layer has the same call, `(x, fields, field_mask) -> z`:
x (B, D) the fused vector of the attention-fusion layer (the heads concatenated, D = heads * E),
fields (B, M, D_f) the per-field vectors before the merge (only AutoInt reads them),
field_mask (B, M); z (B, out_dim) goes to the two fully connected layers.

Which x: the concatenation of the heads. The paper sends "two merged embeddings together to the
upper layer" and warns that more heads "enlarge the embedding size fed into the cross feature
layer and cause exponential growth in the calculation"; both hold only if CF crosses the
concatenation (D = heads * E, D(D-1)/2 pairs), not a sum or mean of the heads (which would stay E).

The linear part: CF passes x through L2-normalised ("to make it comparable with the cross part");
every baseline keeps that same linear part next to its own interaction term, so that a row of
Table 3 swaps exactly one thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utpm.models.layers.attention import masked_softmax


def linear_part(x: Tensor) -> Tensor:
    """(B, D) -> (B, D) L2-normalised; an all-zero x (every field empty) stays zero."""
    return F.normalize(x, p=2.0, dim=-1)


class NoCross(nn.Module):
    """No cross layer (models af1-unshared, af1, af2, youtube): z = x, unnormalised."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: Tensor, fields: Tensor, field_mask: Tensor) -> Tensor:
        return x  # (B, D)


class CrossFeature(nn.Module):
    """UTPM's cross-feature layer (Eq. 3): z = [normalize(x); c], out_dim = D + D(D-1)/2.

    c_ij = (v_i . v_j) x_i x_j for every pair i < j of dimensions of x, v_i in R^C learned. All
    D(D-1)/2 values are kept (not summed as in FM). The pairs come from torch.triu_indices, built
    once; the forward is two gathers and a product, no Python loop over pairs. The gathers take rows
    of x transposed, (D, B): each index then copies B contiguous values, where gathering columns of
    (B, D) copies one value per index and user (ONNX Runtime's Gather; docs/performance.md).
    """

    rows: Tensor  # buffers (register_buffer): the pairs' first and second dimensions
    cols: Tensor

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"the cross layer needs at least 2 dimensions to pair, got {dim}")
        self.dim, self.hidden_dim = dim, hidden_dim
        self.n_pairs = dim * (dim - 1) // 2
        self.out_dim = dim + self.n_pairs
        self.v = nn.Parameter(torch.randn(dim, hidden_dim) * hidden_dim**-0.5)  # so v_i . v_j ~ O(1)
        rows, cols = torch.triu_indices(dim, dim, offset=1)  # (P,), (P,) row-major: (0,1), (0,2), ...
        # Non-persistent: derived from `dim`, so checkpoints hold only learned values.
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def cross(self, x: Tensor) -> Tensor:
        """(B, D) -> c (B, D(D-1)/2), ordered c_12, c_13, ..., c_1D, c_23, ..."""
        rows, cols = self.rows, self.cols
        corr = (self.v[rows] * self.v[cols]).sum(dim=-1)  # (P,) v_i . v_j
        xt = x.t()  # (D, B)
        if torch.onnx.is_in_onnx_export():
            # the products in the gathered (P, B) layout: no transposes of (P, B) in the graph
            return (corr.unsqueeze(-1) * xt[rows] * xt[cols]).t()
        # in eager (training): transposed back to (B, P) first, the layout of corr * x[:, rows] * x[:, cols],
        # so that the gradients are the same bit for bit too (the values are, in either layout)
        return corr * xt[rows].t().contiguous() * xt[cols].t().contiguous()  # (B, P)

    def forward(self, x: Tensor, fields: Tensor, field_mask: Tensor) -> Tensor:
        return torch.cat([linear_part(x), self.cross(x)], dim=-1)  # (B, D + P)


class AFMCross(nn.Module):
    """Attentional FM (Xiao et al. 2017) over the dimensions of x: z = [normalize(x); p], D + C.

    Each dimension's hidden vector is v_i x_i (v_i in R^C); each pair gives the Hadamard product
    e_ij = (v_i x_i) * (v_j x_j) in R^C; an attention net a_ij = h . relu(W e_ij + b) (space of size
    `attn_dim`, T here), softmax over pairs, p = sum_ij a_ij e_ij. Memory is B * D(D-1)/2 * max(C, T),
    which is why AFM summing the pairs away is cheap to store but not to compute.
    """

    rows: Tensor  # buffers, as CrossFeature's
    cols: Tensor

    def __init__(self, dim: int, hidden_dim: int, attn_dim: int) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"AFM needs at least 2 dimensions to pair, got {dim}")
        self.out_dim = dim + hidden_dim
        self.v = nn.Parameter(torch.randn(dim, hidden_dim) * hidden_dim**-0.5)
        self.attn = nn.Linear(hidden_dim, attn_dim)
        self.h = nn.Parameter(torch.randn(attn_dim) * attn_dim**-0.5)
        rows, cols = torch.triu_indices(dim, dim, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x: Tensor, fields: Tensor, field_mask: Tensor) -> Tensor:
        rows, cols = self.rows, self.cols
        hid = x.unsqueeze(-1) * self.v  # (B, D, C) v_i x_i
        pairs = hid[:, rows] * hid[:, cols]  # (B, P, C)
        scores = torch.relu(self.attn(pairs)) @ self.h  # (B, P)
        weights = torch.softmax(scores, dim=-1)  # (B, P)
        p = (weights.unsqueeze(-1) * pairs).sum(dim=1)  # (B, C)
        return torch.cat([linear_part(x), p], dim=-1)  # (B, D + C)


class NFMCross(nn.Module):
    """Neural FM's bi-interaction pooling (He & Chua 2017): z = [normalize(x); b], D + C.

    b = sum_{i<j} (v_i x_i) * (v_j x_j) = 0.5 * ((sum_i v_i x_i)^2 - sum_i (v_i x_i)^2) in R^C, in
    O(D C). NFM's hidden layers are the two fully connected layers above.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.out_dim = dim + hidden_dim
        self.v = nn.Parameter(torch.randn(dim, hidden_dim) * hidden_dim**-0.5)

    def forward(self, x: Tensor, fields: Tensor, field_mask: Tensor) -> Tensor:
        summed = x @ self.v  # (B, C)
        squares = (x * x) @ (self.v * self.v)  # (B, C)
        bi = 0.5 * (summed * summed - squares)  # (B, C)
        return torch.cat([linear_part(x), bi], dim=-1)  # (B, D + C)


class DCNCross(nn.Module):
    """Deep & Cross Network's cross network (Wang et al. 2017): z = [normalize(x); x_L], 2D.

    x_{l+1} = x_0 (w_l . x_l) + b_l + x_l for `layers` layers (2 here). DCN feeds x_L beside its
    deep part; the deep part here is the two fully connected layers on top.
    """

    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"DCN needs at least 1 cross layer, got {layers}")
        self.out_dim = 2 * dim
        self.w = nn.Parameter(torch.randn(layers, dim) * dim**-0.5)
        self.b = nn.Parameter(torch.zeros(layers, dim))

    def forward(self, x: Tensor, fields: Tensor, field_mask: Tensor) -> Tensor:
        xl = x  # (B, D)
        for w, b in zip(self.w, self.b, strict=True):  # loop over the (fixed) layers, not the data
            xl = x * (xl @ w).unsqueeze(-1) + b + xl  # (B, D)
        return torch.cat([linear_part(x), xl], dim=-1)  # (B, 2D)


class InteractingLayer(nn.Module):
    """One AutoInt interacting layer (Song et al. 2019) over M field vectors.

    Multi-head scaled dot-product self-attention with a residual projection and relu:
    (B, M, d_in) -> (B, M, heads * head_dim). Empty fields are masked as keys and zeroed as rows.
    """

    def __init__(self, in_dim: int, head_dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.out_dim = heads * head_dim
        self.q = nn.Linear(in_dim, self.out_dim, bias=False)
        self.k = nn.Linear(in_dim, self.out_dim, bias=False)
        self.v = nn.Linear(in_dim, self.out_dim, bias=False)
        self.res = nn.Linear(in_dim, self.out_dim, bias=False)

    def forward(self, e: Tensor, field_mask: Tensor) -> Tensor:
        """e (B, M, d_in), field_mask (B, M) -> (B, M, heads * head_dim)."""
        b, m = e.shape[0], e.shape[1]
        q = self.q(e).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)  # (B, n, M, d)
        k = self.k(e).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)  # (B, n, M, d)
        v = self.v(e).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)  # (B, n, M, d)
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # (B, n, M, M)
        attn = masked_softmax(scores, field_mask[:, None, None, :])  # (B, n, M, M)
        out = (attn @ v).transpose(1, 2).reshape(b, m, self.out_dim)  # (B, M, n*d)
        return torch.relu(out + self.res(e)) * field_mask.unsqueeze(-1)  # (B, M, n*d)


class AutoIntCross(nn.Module):
    """AutoInt over the M per-field vectors: z = [normalize(x); flatten(AutoInt(fields))].

    The paper feeds AutoInt "after the fusion within each feature field", i.e. the field vectors
    (heads concatenated, D_f = heads * E) rather than the merged x, since AutoInt crosses fields.
    The merged x still supplies the linear part, as for CF. Output D + M * heads * head_dim.
    """

    def __init__(self, dim: int, n_fields: int, field_dim: int, head_dim: int, heads: int, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"AutoInt needs at least 1 interacting layer, got {layers}")
        blocks = []
        in_dim = field_dim
        for _ in range(layers):
            blocks.append(InteractingLayer(in_dim, head_dim, heads))
            in_dim = heads * head_dim
        self.blocks = nn.ModuleList(blocks)
        self.n_fields = n_fields
        self.out_dim = dim + n_fields * in_dim

    def forward(self, x: Tensor, fields: Tensor, field_mask: Tensor) -> Tensor:
        if fields.shape[1] != self.n_fields:
            raise ValueError(f"AutoInt was built for {self.n_fields} fields, got {fields.shape[1]}")
        e = fields  # (B, M, D_f)
        for block in self.blocks:
            e = block(e, field_mask)  # (B, M, n*d)
        return torch.cat([linear_part(x), e.flatten(start_dim=1)], dim=-1)  # (B, D + M*n*d)
