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
    order = np.random.default_rng(0).permutation(len(keep))
    chosen = np.sort(order[: int(np.searchsorted(np.cumsum(pairs[order]), budget, side="right"))])
    assert 0 < pairs[chosen].sum() <= budget
    alone = TagStats.fit([hist[keep[j]] for j in chosen], [labels[keep[j]] for j in chosen], 40, neighbours=5)
    _same(sampled, alone)
