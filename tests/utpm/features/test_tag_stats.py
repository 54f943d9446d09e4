"""TagStats.fit at scale: pairs counted a chunk at a time, and a user sample past a pair budget."""

from __future__ import annotations

import numpy as np
import pytest

import utpm.features.history as history
from utpm.features.history import TagStats


def _users(n: int, n_tags: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    hist = [rng.choice(np.arange(2, n_tags), rng.integers(0, 12), replace=False) for _ in range(n)]
    labels = [rng.choice(np.arange(2, n_tags), rng.integers(0, 6), replace=False) for _ in range(n)]
    return hist, labels


def _same(a: TagStats, b: TagStats) -> None:
    for name in ("indptr", "indices", "lift", "repeat", "label_rate", "popular"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_pairs_counted_in_chunks_give_the_same_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    hist, labels = _users(300, 40, seed=1)
    whole = TagStats.fit(hist, labels, 40, neighbours=5)
    monkeypatch.setattr(history, "PAIR_CHUNK", 7)  # many small chunks, merged as they come
    _same(TagStats.fit(hist, labels, 40, neighbours=5), whole)
    codes, counts = history._count_pairs([(h, c) for h, c in zip(hist, labels, strict=True) if len(h)], 40)
    raw = np.concatenate([(h[:, None] * 40 + c[None, :]).ravel() for h, c in zip(hist, labels, strict=True)])
    want_codes, want_counts = np.unique(raw, return_counts=True)
    assert np.array_equal(codes, want_codes) and np.array_equal(counts, want_counts)


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
