"""Joint (Eq. 4) and separate losses against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from utpm.models import joint_loss, separate_loss


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce(z: float, y: float) -> float:
    """-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], written out from the definition."""
    p = sigmoid(z)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_joint_loss_by_hand() -> None:
    # one user, three label items: clicked (logit 2), not clicked (logit -1), padding (logit 5)
    logits = torch.tensor([[2.0, -1.0, 5.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = (-math.log(sigmoid(2.0)) - math.log(1 - sigmoid(-1.0))) / 2
    assert joint_loss(logits, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_joint_loss_sums_the_tags_of_an_item() -> None:
    # an item with tag preferences u.t = 3 and -2.5 (a third tag padded): y = sigmoid(0.5)
    per_tag = torch.tensor([[[3.0, -2.5, 0.0]]])
    tag_mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    item_logits = (per_tag * tag_mask).sum(-1)  # what UserModel.item_logits returns
    loss = joint_loss(item_logits, torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx(-math.log(sigmoid(0.5)), rel=1e-6)
    # the separate loss of the same item treats each tag as its own positive
    sep = separate_loss(per_tag, torch.tensor([[1.0]]), tag_mask)
    assert sep.item() == pytest.approx((-math.log(sigmoid(3.0)) - math.log(sigmoid(-2.5))) / 2, rel=1e-6)


def test_joint_loss_averages_over_real_items_of_the_whole_batch() -> None:
    logits = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = (math.log(2) + bce(1.0, 1) + math.log(2) + bce(2.0, 0)) / 4  # 4 real items, not a mean of means
    assert joint_loss(logits, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_separate_loss_by_hand() -> None:
    # two items of two tags: item 0 clicked with tag logits 1, -2; item 1 not clicked, logits 0.5, [pad 3]
    tag_logits = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])
    labels = torch.tensor([[1.0, 0.0]])
    tag_mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    expected = (-math.log(sigmoid(1.0)) - math.log(sigmoid(-2.0)) - math.log(1 - sigmoid(0.5))) / 3
    assert separate_loss(tag_logits, labels, tag_mask).item() == pytest.approx(expected, rel=1e-6)
    # a padded label item drops all its tags
    label_mask = torch.tensor([[1.0, 0.0]])
    expected = (-math.log(sigmoid(1.0)) - math.log(sigmoid(-2.0))) / 2
    assert separate_loss(tag_logits, labels, tag_mask, label_mask).item() == pytest.approx(expected, rel=1e-6)


def test_padding_gets_no_gradient_and_changes_nothing() -> None:
    logits = torch.tensor([[0.3, -0.7, 9.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = joint_loss(logits, labels, mask)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 2] == 0
    # d/dz of mean BCE = (sigmoid(z) - y) / n_real
    assert logits.grad[0, 0].item() == pytest.approx((sigmoid(0.3) - 1) / 2, rel=1e-5)
    other = joint_loss(torch.tensor([[0.3, -0.7, -50.0]]), torch.tensor([[1.0, 0.0, 1.0]]), mask)
    assert other.item() == pytest.approx(loss.item(), rel=1e-7)

    tag_logits = torch.tensor([[[0.2, 4.0]]], requires_grad=True)
    separate_loss(tag_logits, torch.tensor([[1.0]]), torch.tensor([[[1.0, 0.0]]])).backward()
    assert tag_logits.grad is not None and tag_logits.grad[0, 0, 1] == 0


def test_extreme_logits_and_empty_batches_stay_finite() -> None:
    # log(1 - sigmoid(100)) underflows naively; with logits it is -100 (up to e^-100)
    loss = joint_loss(torch.tensor([[100.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx(100.0, rel=1e-6)
    nothing = torch.zeros(2, 3)
    empty = joint_loss(torch.randn(2, 3, requires_grad=True), nothing, nothing)
    assert empty.item() == 0.0
    empty_sep = separate_loss(torch.randn(2, 3, 4), nothing, torch.zeros(2, 3, 4))
    assert empty_sep.item() == 0.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        joint_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        separate_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 3, 5))
