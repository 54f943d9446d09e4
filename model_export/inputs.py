"""Encoded users <-> the ONNX user tower's named inputs and outputs (torch-free).

The tower takes, per field in model order, `<field>_ids` (B, H_f) int64 and `<field>_mask`
(B, H_f) float32, and returns `user_embedding` (B, U), `attn_<field>` (B, heads, H_f) per field
and `attn_merge` (B, heads, M), in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_export.manifest import ids_input, mask_input
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
