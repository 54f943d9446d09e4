"""Explanations: which input features and fields a user's embedding rests on (the paper's Figure 3).

`explain` runs the model once and keeps its attention weights: per field, the weight of every value
for every head, and per head, the weight of every field at the merge level. Mean-pooling models
(youtube) report their uniform pooling weights, so every model answers the same way. For the
default model, `score_parts` also splits each top tag's score into the model part and the history
part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from utpm.features.encoding import FeatureEncoder
from utpm.features.vocab import Vocabulary
from utpm.models.history import HistoryModel
from utpm.models.user_model import UserModel
from utpm.ranking import top_k


@dataclass
class Explanation:
    """For B users: u (B, U); field_weights[f] (B, heads, H_f); merge_weights (B, heads, M).

    ids/masks are the inputs, kept so weights can be mapped back to feature values.
    """

    field_names: list[str]
    ids: list[Tensor]
    masks: list[Tensor]
    u: Tensor
    field_weights: list[Tensor]
    merge_weights: Tensor

    @property
    def heads(self) -> int:
        return int(self.merge_weights.shape[1])


@torch.no_grad()
def explain(model: UserModel, ids: list[Tensor], masks: list[Tensor]) -> Explanation:
    """Run `model` on ids[f] (B, H_f), masks[f] (B, H_f) and return its weights (no gradients)."""
    u, field_weights, merge_weights = model.forward_with_attention(ids, masks)
    return Explanation(model.field_names, list(ids), list(masks), u, field_weights, merge_weights)


def feature_weights(explanation: Explanation, encoder: FeatureEncoder, user: int) -> list[dict[str, Any]]:
    """One user's real input features as plain rows, field by field in input order:

    {"field": name, "value": raw string, "id": int, "weights": [head 1, head 2, ...],
     "field_weights": [merge weight of the field per head]}.
    Padded positions are left out. Sort by a head's weight to get the paper's Figure 3.
    """
    if encoder.field_names != explanation.field_names:
        raise ValueError(f"encoder fields {encoder.field_names} != model fields {explanation.field_names}")
    n_users = int(explanation.u.shape[0])
    if not 0 <= user < n_users:
        raise ValueError(f"user index must be in [0, {n_users}), got {user}")
    rows: list[dict[str, Any]] = []
    merge = explanation.merge_weights[user]  # (heads, M)
    for f, name in enumerate(explanation.field_names):
        vocab = encoder.vocabs[name]
        ids = explanation.ids[f][user].tolist()  # H_f ints
        mask = explanation.masks[f][user].tolist()  # H_f floats
        weights = explanation.field_weights[f][user]  # (heads, H_f)
        for pos, (i, m) in enumerate(zip(ids, mask, strict=True)):
            if m <= 0:
                continue
            rows.append(
                {
                    "field": name,
                    "value": vocab.token(int(i)),
                    "id": int(i),
                    "weights": [float(w) for w in weights[:, pos]],
                    "field_weights": [float(w) for w in merge[:, f]],
                }
            )
    return rows


@dataclass
class ScoreParts:
    """For B users of the default model (utpm-hist), the top-k tags by the final score and what
    each score is made of: model = u . o_t + b_t, history = g(phi_ut) (0 off the scored history
    tags); model + history = score. The service's explain answers the same from ONNX
    (service.engine), this is the PyTorch side."""

    tag_ids: Tensor  # (B, k)
    scores: Tensor  # (B, k)
    model: Tensor  # (B, k)
    history: Tensor  # (B, k)


@torch.no_grad()
def score_parts(
    model: HistoryModel,
    ids: list[Tensor],
    masks: list[Tensor],
    counts: list[Tensor],
    hist_ids: Tensor,
    hist_feats: Tensor,
    hist_mask: Tensor,
    k: int,
) -> ScoreParts:
    """Top-k tags (padding and OOV excluded) of each user with their model and history parts."""
    u = model.user_vector(ids, masks, counts)[0]
    model_part = model.model_scores(u)
    history = torch.zeros_like(model_part).scatter_add(1, hist_ids, model.history_scores(hist_feats, hist_mask))
    final = model_part + history
    final[:, : Vocabulary.OOV + 1] = -torch.inf
    top = torch.from_numpy(top_k(final.detach().numpy(), min(k, model.n_tags - Vocabulary.OOV - 1)))
    return ScoreParts(top, final.gather(1, top), model_part.gather(1, top), history.gather(1, top))
