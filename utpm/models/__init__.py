"""UTPM and its baselines in PyTorch (needs the `train` extra).

Typical use:

    model = build_model("utpm", encoder.specs, n_tags, get_preset("movielens"), seed=0)
    u = model(ids, masks)                                   # (B, U)
    loss = joint_loss(model.item_logits(u, tags, tag_mask), labels, label_mask)
"""

from utpm.models.explain import Explanation, explain, feature_weights
from utpm.models.losses import LOSS_NAMES, joint_loss, separate_loss
from utpm.models.presets import ACTIVATIONS, PRESETS, Preset, get_preset
from utpm.models.registry import ARCHITECTURES, MODEL_NAMES, build_model, default_loss
from utpm.models.user_model import Architecture, UserModel

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "LOSS_NAMES",
    "MODEL_NAMES",
    "PRESETS",
    "Architecture",
    "Explanation",
    "Preset",
    "UserModel",
    "build_model",
    "default_loss",
    "explain",
    "feature_weights",
    "get_preset",
    "joint_loss",
    "separate_loss",
]
