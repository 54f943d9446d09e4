"""`ItemNeighbours`: each item's nearest tagged items by co-clicks, and a user's best unseen items;
`ItemNeighbourTags`: their tags as the history encoder's feature and candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utpm.features.encoding import FeatureEncoder
from utpm.features.history import ITEM_FIELD, PHI_NAMES, TAG_FIELD, HistoryEncoder, stats_from_sequence
from utpm.features.item_neighbours import RECENT_ITEMS, ItemNeighbours, ItemNeighbourTags
from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.vocab import Vocabulary

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


# the catalogue of the encoder tests: items a..e; e has no tags; tag ids 2..5 of a vocabulary of 6
CATALOGUE = ["a", "b", "c", "d", "e"]
ITEM_TAGS = {0: [2], 1: [3, 4], 2: [4, 5], 3: [5], 4: []}


def _item_tags(k: int = 10) -> ItemNeighbourTags:
    return ItemNeighbourTags.fit(CLICKED, CATALOGUE, lambda c: np.asarray(ITEM_TAGS[c]), k)


def test_item_tags_score_the_tags_of_the_best_unclicked_items_over_the_users_highest() -> None:
    it = _item_tags()
    assert sorted(it.items.tokens[2:]) == CATALOGUE  # every clicked item, by clicks
    a, e = it.items.ids(["a", "e"]).tolist()
    tags, score = it.tag_scores(np.array([a, e, Vocabulary.OOV]))
    # unclicked neighbours of a and e: b (3/sqrt(20), tags 3, 4) and c (2/sqrt(15) + 1/sqrt(6), tags 4, 5)
    b_score, c_score = 3 / math.sqrt(20), 2 / math.sqrt(15) + 1 / math.sqrt(6)
    expected = {4: b_score + c_score, 5: c_score, 3: b_score}
    high = max(expected.values())
    assert tags.tolist() == [4, 5, 3]  # best first
    assert score.tolist() == pytest.approx([expected[t] / high for t in (4, 5, 3)])
    assert it.tag_scores(np.zeros(0, np.int64))[0].tolist() == []


def test_only_the_most_recent_clicked_items_are_read() -> None:
    it = _item_tags()
    a, b, d = it.items.ids(["a", "b", "d"]).tolist()
    it.recent_items = 1
    # oldest first: with one read, a and b are as if not clicked, so they are scored as d's neighbours
    # (d's neighbours are nobody: d was clicked alone), and nothing is left
    assert it.tag_scores(np.array([a, b, d]))[0].tolist() == []
    latest_a, a_alone = it.tag_scores(np.array([d, b, a])), it.tag_scores(np.array([a]))
    assert [x.tolist() for x in latest_a] == [x.tolist() for x in a_alone]
    it.recent_items = 0  # every item
    assert it.tag_scores(np.array([a, b, d]))[0].tolist() != []


def test_item_tags_round_trip_through_arrays() -> None:
    it = _item_tags(k=2)
    it.recent_items = 7
    back = ItemNeighbourTags.from_arrays(it.to_arrays())
    assert back is not None and back.items.tokens == it.items.tokens and back.top_items == it.top_items
    assert back.recent_items == 7
    # a bundle exported before the setting reads what its requests carried
    old = {k: v for k, v in it.to_arrays().items() if not k.endswith("recent_items")}
    assert ItemNeighbourTags.from_arrays(old).recent_items == RECENT_ITEMS  # type: ignore[union-attr]
    ids = it.items.ids(["a", "d"])
    assert [x.tolist() for x in back.tag_scores(ids)] == [x.tolist() for x in it.tag_scores(ids)]
    assert ItemNeighbourTags.from_arrays({}) is None


def _encoder(item_candidates: int = 10, n_phi: int = len(PHI_NAMES)) -> HistoryEncoder:
    tags = Vocabulary(["<pad>", "<oov>", "t2", "t3", "t4", "t5"])
    spec = FieldSpec(TAG_FIELD, FieldKind.MULTI, len(tags), 5)
    return HistoryEncoder(
        FeatureEncoder([spec], {TAG_FIELD: tags}),
        tags,
        5,
        items=_item_tags(),
        item_candidates=item_candidates,
        n_phi=n_phi,
    )


def test_the_encoder_scores_history_tags_and_appends_the_other_item_tags_as_candidates() -> None:
    henc = _encoder()
    assert henc.width == 5 + 10 and ITEM_FIELD in henc.request_fields
    users = [
        henc.parse({TAG_FIELD: ["t5"], ITEM_FIELD: ["a", "e", "unheard-of"]}),
        henc.parse({TAG_FIELD: ["t2"]}),  # no items: no item score, no extra candidate
        henc.parse({ITEM_FIELD: ["unheard-of"]}),
    ]
    b = henc.encode(users)
    j = PHI_NAMES.index("item_neighbour_score")
    ids = b.hist_ids[0][b.hist_mask[0] > 0].tolist()
    # the history tag t5 keeps its slot and gets its score; t4 and t3 come after it, best first
    assert ids == [5, 4, 3]
    it = henc.items
    assert it is not None
    found, scores = it.tag_scores(it.items.ids(["a", "e"]))
    want = dict(zip(found.tolist(), scores.tolist(), strict=True))
    assert b.hist_feats[0, :3, j].tolist() == pytest.approx([want[5], want[4], want[3]])
    assert b.hist_feats[0, 0, PHI_NAMES.index("log1p_count")] > 0 == b.hist_feats[0, 1, PHI_NAMES.index("log1p_count")]
    assert b.hist_feats[0, 1, PHI_NAMES.index("log1p_history_length")] == pytest.approx(math.log1p(1))
    assert b.hist_ids[1][b.hist_mask[1] > 0].tolist() == [2] and b.hist_feats[1, :, j].sum() == 0
    # unknown items are reported as a field's unknown values are; a user with known items is known
    assert b.unknown[0] == {ITEM_FIELD: ["unheard-of"]} and b.unknown[2] == {ITEM_FIELD: ["unheard-of"]}
    assert b.known is not None and b.known.tolist() == [True, True, False]


def test_item_candidates_bound_the_appended_tags_and_an_old_bundle_reads_fewer_features() -> None:
    b = _encoder(item_candidates=1).encode([{ITEM_FIELD: stats_from_sequence(["a"])}])
    assert b.hist_ids[0][b.hist_mask[0] > 0].tolist() == [4]  # the best of t4, t3, t5 only
    old = _encoder(n_phi=len(PHI_NAMES) - 1).encode([{ITEM_FIELD: stats_from_sequence(["a"])}])
    assert old.hist_feats.shape[2] == len(PHI_NAMES) - 1
    assert old.hist_ids[0][old.hist_mask[0] > 0].tolist() == [4, 3, 5]
    with pytest.raises(ValueError, match="n_phi"):
        _encoder(n_phi=0)


def test_the_counting_keeps_each_users_most_recent_items_and_samples_users_past_the_budget() -> None:
    from utpm.features.item_neighbours import _within_budget

    users = [np.array([5, 3, 5, 7, 2]), np.array([1, 2]), np.array([4, 6, 8])]
    kept = _within_budget(users, max_user_items=2, max_pairs=100)
    assert sorted(kept[0].tolist()) == [2, 7]  # the two most recent distinct: 7, then 2
    assert sorted(kept[1].tolist()) == [1, 2] and sorted(kept[2].tolist()) == [6, 8]
    # a budget of 8 pairs: two users of 4 pairs each fit, the third counts nothing
    sampled = _within_budget(users, max_user_items=2, max_pairs=8)
    again = _within_budget(users, max_user_items=2, max_pairs=8)
    assert sum(len(u) > 0 for u in sampled) == 2
    assert [u.tolist() for u in sampled] == [u.tolist() for u in again]  # seeded
    # fitted under a budget that leaves users out, the neighbours come from the others only
    it = ItemNeighbourTags.fit(CLICKED, CATALOGUE, lambda c: np.asarray(ITEM_TAGS[c]), 10, max_pairs=0)
    assert len(it.neighbours.items) == 0 and sorted(it.items.tokens[2:]) == CATALOGUE


def _numpy_tag_scores(it: ItemNeighbourTags, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy version `tag_scores` replaced: the reference its compiled kernel must equal."""
    clicked = np.unique(clicked[clicked > Vocabulary.OOV])
    items, score = it.neighbours.scores(clicked, clicked, it.top_items)
    if not len(items):
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    lo, hi = it.tag_indptr[items], it.tag_indptr[items + 1]
    n = hi - lo
    at = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
    tags, inverse = np.unique(it.tag_ids[at].astype(np.int64), return_inverse=True)
    total = np.bincount(inverse, weights=np.repeat(score, n), minlength=len(tags))
    best = np.lexsort((tags, -total))
    return tags[best], total[best] / total[best[0]]


def test_the_compiled_tag_scores_give_the_bits_of_the_numpy_version() -> None:
    rng = np.random.default_rng(0)
    n_items, n_tags = 300, 40
    catalogue = [f"i{j}" for j in range(n_items)]
    tags_of = {j: rng.choice(np.arange(2, n_tags), rng.integers(0, 4), replace=False) for j in range(n_items)}
    clicked = [rng.choice(n_items, rng.integers(1, 30)) for _ in range(200)]
    for top_items in (100, 3):
        it = ItemNeighbourTags.fit(clicked, catalogue, tags_of.__getitem__, k=20, top_items=top_items)
        for _ in range(60):
            mine = it.items.ids([catalogue[j] for j in rng.choice(n_items, rng.integers(0, 25))])
            mine = np.append(mine, Vocabulary.OOV)  # ignored
            got, want = it.tag_scores(mine), _numpy_tag_scores(it, mine)
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
        # the scratch is left clear: a second call gives the same
        assert [x.tolist() for x in it.tag_scores(mine)] == [x.tolist() for x in got]
