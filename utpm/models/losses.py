"""The two training losses of the paper, as pure functions of logits and masks.

joint (Eq. 4): one BCE term per label item, on the logit sum_i u . t_i over the item's tags:
the user need only like some of a clicked item's tags.
separate: one BCE term per tag, each tag carrying its item's label (the baseline of Table 4).

Both use BCE-with-logits (log-sigmoid, stable for large |logit|) and average over the real terms
of the whole batch, so every real item (joint) or tag (separate) weighs the same whichever user it
belongs to. A batch without any real term gives 0, not NaN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

LOSS_NAMES = ("joint", "separate")


def _masked_mean_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    terms = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # same shape as logits
    mask = mask.to(terms.dtype)
    return (terms * mask).sum() / mask.sum().clamp_min(1.0)  # ()


def joint_loss(item_logits: Tensor, labels: Tensor, label_mask: Tensor) -> Tensor:
    """item_logits (B, K) from `UserModel.item_logits`, labels (B, K) in {0, 1}, label_mask (B, K)
    1 for real label items -> scalar mean BCE over the real items."""
    if item_logits.shape != labels.shape or labels.shape != label_mask.shape:
        raise ValueError(
            f"shapes differ: logits {tuple(item_logits.shape)}, labels {tuple(labels.shape)}, "
            f"mask {tuple(label_mask.shape)}"
        )
    return _masked_mean_bce(item_logits, labels.to(item_logits.dtype), label_mask)


def separate_loss(tag_logits: Tensor, labels: Tensor, tag_mask: Tensor, label_mask: Tensor | None = None) -> Tensor:
    """tag_logits (B, K, N) from `UserModel.tag_logits`, labels (B, K), tag_mask (B, K, N) 1 for real
    tags, label_mask (B, K) optional (a padded item's tags count as padded) -> scalar mean BCE
    over the real tags, each with its item's label."""
    if tag_logits.shape != tag_mask.shape or tag_logits.shape[:2] != labels.shape:
        raise ValueError(
            f"shapes differ: logits {tuple(tag_logits.shape)}, labels {tuple(labels.shape)}, "
            f"tag mask {tuple(tag_mask.shape)}"
        )
    mask = tag_mask.to(tag_logits.dtype)
    if label_mask is not None:
        mask = mask * label_mask.to(tag_logits.dtype).unsqueeze(-1)  # (B, K, N)
    targets = labels.to(tag_logits.dtype).unsqueeze(-1).expand_as(tag_logits)  # (B, K, N)
    return _masked_mean_bce(tag_logits, targets, mask)
