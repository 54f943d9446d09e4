"""Encoded users <-> the ONNX user tower's named inputs and outputs (torch-free).

The tower takes, per field in model order, `<field>_ids` (B, H_f) int64 and `<field>_mask`
(B, H_f) float32, and returns `user_embedding` (B, U), `attn_<field>` (B, heads, H_f) per field
and `attn_merge` (B, heads, M), in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_export.manifest import HIST_FEATS_INPUT, HIST_MASK_INPUT, counts_input, ids_input, mask_input
from utpm.features.encoding import EncodedBatch


def onnx_feed(batch: EncodedBatch, field_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The session feed for an encoded batch: {<field>_ids: (B, H_f) int64, <field>_mask: (B, H_f) float32}."""
    feed: dict[str, np.ndarray] = {}
    for name in field_names:
        feed[ids_input(name)] = np.ascontiguousarray(batch.ids[name], dtype=np.int64)
        feed[mask_input(name)] = np.ascontiguousarray(batch.mask[name], dtype=np.float32)
    return feed


@dataclass(frozen=True)
class TowerOutputs:
    """user_embedding (B, U); field_attention[f] (B, heads, H_f); merge_attention (B, heads, M)."""

    user_embedding: np.ndarray
    field_attention: dict[str, np.ndarray]
    merge_attention: np.ndarray

    @classmethod
    def from_list(cls, outputs: Sequence[np.ndarray], field_names: Sequence[str]) -> TowerOutputs:
        """From the session's outputs in their declared order: u, one per field, merge."""
        if len(outputs) != len(field_names) + 2:
            raise ValueError(f"expected {len(field_names) + 2} outputs, got {len(outputs)}")
        return cls(outputs[0], dict(zip(field_names, outputs[1:-1], strict=True)), outputs[-1])


def history_feed(
    input_names: Sequence[str],
    field_names: Sequence[str],
    ids: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    counts: Sequence[np.ndarray],
    hist_feats: np.ndarray,
    hist_mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """The feed of the default model's scorer graph (utpm-hist): per field ids, mask, counts (fields in
    model order), then `hist_feats` (B, Hh, P) and `hist_mask` (B, Hh). Only the graph's own inputs
    are fed: an input the model does not use (counts when switched off) is not in the graph."""
    arrays: dict[str, np.ndarray] = {HIST_FEATS_INPUT: hist_feats, HIST_MASK_INPUT: hist_mask}
    for f, name in enumerate(field_names):
        arrays[ids_input(name)] = ids[f]
        arrays[mask_input(name)] = masks[f]
        arrays[counts_input(name)] = counts[f]
    dtypes = {n: (np.int64 if n.endswith("_ids") else np.float32) for n in arrays}
    return {n: np.ascontiguousarray(arrays[n], dtype=dtypes[n]) for n in input_names}
