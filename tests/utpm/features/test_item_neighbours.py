"""`ItemNeighbours`: each item's nearest tagged items by co-clicks, and a user's best unseen items."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utpm.features.item_neighbours import ItemNeighbours

# items 0..4; item 4 has no tags
HAS_TAGS = np.array([True, True, True, True, False])
CLICKED = [np.array(c) for c in ([0, 1], [0, 1], [0, 1, 2], [0, 2, 4], [3], [0, 4], [2, 1, 1])]


def test_the_similarity_is_the_cosine_of_the_sets_of_users_who_clicked_both() -> None:
    nb = ItemNeighbours.fit(CLICKED, 5, HAS_TAGS, k=10)
    lo, hi = nb.indptr[0], nb.indptr[1]
    row = dict(zip(nb.items[lo:hi].tolist(), nb.similarity[lo:hi].tolist(), strict=True))
    # clickers: item 0 by 5 users, item 1 by 4 (a repeat within a user counts once), item 2 by 3
    assert row == pytest.approx({1: 3 / math.sqrt(5 * 4), 2: 2 / math.sqrt(5 * 3)})
    # best first, and an item without tags is nobody's neighbour (it gives no tags), though it has some
    assert nb.items[lo:hi].tolist() == [1, 2]
    assert 4 not in nb.items.tolist() and nb.indptr[5] > nb.indptr[4]
    # an item nobody clicked with another has none
    assert nb.indptr[4] == nb.indptr[3]


def test_k_keeps_the_best_neighbours() -> None:
    nb = ItemNeighbours.fit(CLICKED, 5, HAS_TAGS, k=1)
    assert np.diff(nb.indptr).max() == 1 and nb.items[nb.indptr[0]] == 1


def test_a_users_scores_sum_their_clicked_items_neighbours_and_leave_seen_items_out() -> None:
    nb = ItemNeighbours.fit(CLICKED, 5, HAS_TAGS, k=10)
    items, scores = nb.scores(np.array([0, 4]), seen=np.array([0, 4, 1]))
    # item 1 is seen; item 2 is a neighbour of both 0 and 4
    expected = 2 / math.sqrt(5 * 3) + 1 / math.sqrt(2 * 3)
    assert items.tolist() == [2] and scores.tolist() == pytest.approx([expected])
    assert nb.scores(np.zeros(0, np.int64), np.zeros(0, np.int64))[0].tolist() == []  # no clicks: nothing
    # at most top_items, best first, ties by id
    items, scores = nb.scores(np.array([0]), seen=np.array([0]), top_items=1)
    assert items.tolist() == [1]
