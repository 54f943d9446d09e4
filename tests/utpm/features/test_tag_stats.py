"""TagStats.fit at scale: every pair counted, and a user sample past a pair budget."""

from __future__ import annotations

import numpy as np
import pytest

from utpm.features import pair_counts
from utpm.features.history import TagStats
from utpm.features.item_neighbours import ItemNeighbours
from utpm.features.pair_counts import count_pairs, top_neighbours, top_neighbours_by_block


def _users(n: int, n_tags: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    hist = [rng.choice(np.arange(2, n_tags), rng.integers(0, 12), replace=False) for _ in range(n)]
    labels = [rng.choice(np.arange(2, n_tags), rng.integers(0, 6), replace=False) for _ in range(n)]
    return hist, labels


def _same(a: TagStats, b: TagStats) -> None:
    for name in ("indptr", "indices", "lift", "repeat", "label_rate", "popular"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_pair_counts_are_every_users_distinct_pairs_counted() -> None:
    hist, labels = _users(300, 40, seed=1)
    hist[3] = np.zeros(0, np.int64)  # a user without history tags, one without labels
    labels[4] = np.zeros(0, np.int64)
    pairs = count_pairs(list(zip(hist, labels, strict=True)), 40)
    raw = np.concatenate([(h[:, None] * 40 + c[None, :]).ravel() for h, c in zip(hist, labels, strict=True)])
    codes, counts = np.unique(raw, return_counts=True)
    h, t = codes // 40, codes % 40
    other = h != t
    assert np.array_equal(pairs.indptr, np.concatenate([[0], np.cumsum(np.bincount(h[other], minlength=40))]))
    assert np.array_equal(pairs.tags, t[other]) and np.array_equal(pairs.counts, counts[other])
    assert np.array_equal(pairs.same, np.bincount(h[~other], weights=counts[~other], minlength=40))
    assert pairs.counts.max() > 1 and pairs.same.max() > 1  # rows shared by many users, repeats
    empty = count_pairs([], 40)
    assert len(empty.tags) == 0 and not empty.indptr.any() and not empty.same.any()


def test_top_neighbours_are_each_rows_best_positive_scores_ties_in_row_order() -> None:
    rng = np.random.default_rng(4)
    lens = rng.integers(0, 9, 30)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    score = rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan], indptr[-1])  # ties, zeros, NaN
    got_ptr, chosen = top_neighbours(indptr, score, 3)
    for r in range(30):
        row = [j for j in range(indptr[r], indptr[r + 1]) if score[j] > 0]
        want = sorted(row, key=lambda j: (-score[j], j))[:3]
        assert chosen[got_ptr[r] : got_ptr[r + 1]].tolist() == want
    assert got_ptr[-1] < indptr[-1]  # some rows had more than 3, or scores <= 0


def test_top_neighbours_by_block_are_those_of_the_whole_table_whatever_the_block() -> None:
    rng = np.random.default_rng(5)
    lens = rng.integers(0, 12, 40)
    lens[7] = 30  # a row longer than the blocks: it is scored alone
    indptr = np.concatenate([[0], np.cumsum(lens)])
    score = rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0], indptr[-1])
    want_ptr, want = top_neighbours(indptr, score, 4)
    asked = []

    def score_of(rows: np.ndarray, entries: slice) -> np.ndarray:
        asked.append(entries.stop - entries.start)
        assert np.array_equal(rows, np.repeat(np.arange(40), lens)[entries])  # each entry's row
        return score[entries]

    for block in (1, 7, 25, 10_000):
        asked.clear()
        ptr, chosen, scores = top_neighbours_by_block(indptr, score_of, 4, block)
        assert np.array_equal(ptr, want_ptr) and np.array_equal(chosen, want) and np.array_equal(scores, score[want])
        assert sum(asked) == indptr[-1] and max(asked) <= max(block, 30)  # every entry once, a block at a time
    ptr, chosen, scores = top_neighbours_by_block(np.zeros(1, np.int64), score_of, 4)  # no rows
    assert ptr.tolist() == [0] and len(chosen) == len(scores) == 0


def test_tag_statistics_and_item_neighbours_do_not_depend_on_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scored a block at a time (to bound memory), the lifts, cosines and neighbours are those of one
    block, to the bit."""
    hist, labels = _users(300, 40, seed=3)
    clicked = [np.concatenate([h, c]) for h, c in zip(hist, labels, strict=True)]
    has_tags = np.arange(40) % 7 != 0
    whole = TagStats.fit(hist, labels, 40, neighbours=5), ItemNeighbours.fit(clicked, 40, has_tags, k=5)
    monkeypatch.setattr(pair_counts, "BLOCK_PAIRS", 16)
    blocked = TagStats.fit(hist, labels, 40, neighbours=5), ItemNeighbours.fit(clicked, 40, has_tags, k=5)
    _same(whole[0], blocked[0])
    for name in ("indptr", "items", "similarity"):
        assert np.array_equal(getattr(whole[1], name), getattr(blocked[1], name)), name
    assert len(whole[0].indices) > 100 and len(whole[1].items) > 100


def test_past_the_pair_budget_a_seeded_sample_of_users_gives_every_statistic() -> None:
    hist, labels = _users(300, 40, seed=2)
    total = sum(len(h) * len(c) for h, c in zip(hist, labels, strict=True))
    budget = total // 3
    sampled = TagStats.fit(hist, labels, 40, neighbours=5, max_pairs=budget)
    assert not np.array_equal(sampled.label_rate, TagStats.fit(hist, labels, 40, neighbours=5).label_rate)
    # the same as fitting the sampled users alone: counts, lifts and rates all come from them
    keep = [j for j, c in enumerate(labels) if len(c)]
    pairs = np.asarray([len(hist[j]) * len(labels[j]) for j in keep])
    picked, left = [], budget
    for j in np.random.default_rng(0).permutation(len(keep)).tolist():
        if pairs[j] <= left:  # in the seeded order, every user that still fits
            picked.append(j)
            left -= int(pairs[j])
    chosen = np.sort(picked)
    assert 0 < pairs[chosen].sum() <= budget
    alone = TagStats.fit([hist[keep[j]] for j in chosen], [labels[keep[j]] for j in chosen], 40, neighbours=5)
    _same(sampled, alone)


def _n_users(stats: TagStats) -> int:
    """The number of users the statistics came from, read back from the label rate of the OOV id."""
    return round(0.5 / np.exp(float(stats.label_rate[0])) - 1)


def test_one_user_with_more_pairs_than_the_budget_does_not_cut_the_sample_short() -> None:
    """The sample past the budget took users in a seeded order up to the first that did not fit: one
    crawler (every tag in its history and its labels) early in that order left out every user after
    it. Now it is skipped, and the users that fit are all used."""
    hist, labels = _users(60, 40, seed=3)
    small = sum(len(h) * len(c) for h, c in zip(hist, labels, strict=True))
    crawler = np.arange(2, 40)
    assert small < len(crawler) ** 2  # a budget every other user fits in, the crawler alone not
    for at in (0, 30):  # early and midway in the list (the sample's order is seeded, not the list's)
        h2, l2 = [*hist[:at], crawler, *hist[at:]], [*labels[:at], crawler, *labels[at:]]
        stats = TagStats.fit(h2, l2, 40, neighbours=5, max_pairs=small)
        assert _n_users(stats) == sum(1 for c in labels if len(c))  # every other user with labels
        _same(stats, TagStats.fit(hist, labels, 40, neighbours=5))


def test_a_user_past_the_per_user_cap_is_left_out() -> None:
    hist, labels = _users(100, 40, seed=4)
    crawler = np.arange(2, 40)
    whole = TagStats.fit([*hist, crawler], [*labels, crawler], 40, neighbours=5)
    assert _n_users(whole) == sum(1 for c in labels if len(c)) + 1
    capped = TagStats.fit([*hist, crawler], [*labels, crawler], 40, neighbours=5, max_user_pairs=38 * 38 - 1)
    _same(capped, TagStats.fit(hist, labels, 40, neighbours=5))
