"""The default model's final scores outside PyTorch (torch-free): s(u, t) = u . o_t + b_t + g(phi_ut).

The ONNX graph gives u and g (the history path's score of each of the user's history tags); the
rest is arithmetic over the bundle's tag table and bias, written once here and used by the parity
gate (exact, every tag), the index's recall check and the service (two-stage: ANN candidates plus
the history tags, `index.two_stage`). Padding and OOV (ids 0, 1) are never returned.

A model whose epochs never replaced its linear start (the epoch gate) is exactly b_t + w . phi: its
tag table is zero and its history MLP's output is zero. Its bundle says so (`linear_phi_weights`),
and the service scores it with `linear_history_scores`, without the tower.
"""

from __future__ import annotations

import numpy as np

from utpm.ranking import top_k

RESERVED = 2
# users per dense (B, n_tags) block: 64 x 1M tags x 4 bytes = 256 MB
DENSE_BLOCK_CELLS = 64_000_000


def dense_scores(
    u: np.ndarray, table: np.ndarray, bias: np.ndarray, hist_ids: np.ndarray, hist_g: np.ndarray
) -> np.ndarray:
    """Final scores of every tag (B, n_tags) float32; hist_ids (B, Hh) with g (B, Hh), 0 where padded."""
    s = np.asarray(u, np.float32) @ np.asarray(table, np.float32).T + np.asarray(bias, np.float32)
    rows = np.repeat(np.arange(len(s)), hist_ids.shape[1])
    np.add.at(s, (rows, hist_ids.reshape(-1)), np.asarray(hist_g, np.float32).reshape(-1))
    return s


def linear_phi_weights(table: np.ndarray, mlp_out: np.ndarray | None, linear: np.ndarray | None) -> list[float] | None:
    """w when the scorer is exactly b_t + w . phi: every u . o_t zero (`table` zero) and the history
    MLP's output zero (`mlp_out`, its last layer's weights and bias, all zero); None otherwise.
    `linear` is the history path's linear weights (None without a history path: w = 0)."""
    if np.any(table) or (mlp_out is not None and np.any(mlp_out)):
        return None
    return [] if linear is None else [float(w) for w in np.asarray(linear, np.float32).ravel()]


def linear_history_scores(hist_feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """g(phi) (B, Hh) of a linear scorer: phi (B, Hh, P) . w (P,), float32 (0 for w = [])."""
    if len(weights) == 0:
        return np.zeros(hist_feats.shape[:2], np.float32)
    return np.asarray(hist_feats, np.float32) @ np.asarray(weights, np.float32)


def _top(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = s.copy()
    s[:, :RESERVED] = -np.inf
    ids = top_k(s, min(k, s.shape[1] - RESERVED))
    return ids, np.take_along_axis(s, ids, axis=1)


def exact_top_k(
    u: np.ndarray, table: np.ndarray, bias: np.ndarray, hist_ids: np.ndarray, hist_g: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by the final score over every tag -> (ids (B, k) int64, scores (B, k)), best first."""
    step = max(1, DENSE_BLOCK_CELLS // max(1, len(table)))
    parts = [
        _top(dense_scores(u[lo : lo + step], table, bias, hist_ids[lo : lo + step], hist_g[lo : lo + step]), k)
        for lo in range(0, len(u), step)
    ]
    if not parts:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def model_part(u: np.ndarray, table: np.ndarray, bias: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """u . o_t + b_t of the tags `ids` (B, C), ids >= 0, float32."""
    dots = np.einsum("bu,bcu->bc", np.asarray(u, np.float32), np.asarray(table[ids], np.float32))
    return dots + np.asarray(bias[ids], np.float32)


def history_scores(
    u: np.ndarray, table: np.ndarray, bias: np.ndarray, hist_ids: np.ndarray, hist_g: np.ndarray
) -> np.ndarray:
    """Final scores of each user's own history tags (B, Hh): u . o_h + b_h + g, -inf at padding.
    `scores_at(..., ids=hist_ids)` without its per-tag loop (a user's history tags are distinct)."""
    s = model_part(u, table, bias, hist_ids) + np.asarray(hist_g, np.float32)
    return np.where(hist_ids >= RESERVED, s, -np.inf).astype(np.float32)


def scores_at(
    u: np.ndarray,
    table: np.ndarray,
    bias: np.ndarray,
    hist_ids: np.ndarray,
    hist_g: np.ndarray,
    ids: np.ndarray,
) -> np.ndarray:
    """Final scores of the given tags (B, C) for each user; ids (B, C) (-1: padding, scored -inf)."""
    s = model_part(u, table, bias, np.clip(ids, 0, None))
    g = np.asarray(hist_g, np.float32)
    for b in range(len(ids)):
        pos = {int(t): j for j, t in enumerate(hist_ids[b].tolist()) if t > 0}
        for c, t in enumerate(ids[b].tolist()):
            j = pos.get(int(t))
            if j is not None:
                s[b, c] += g[b, j]
    return np.where(ids >= RESERVED, s, -np.inf).astype(np.float32)
