"""Prec@K (the paper's Eq. 5) on hand-computed cases, the yardsticks, and the experiment's verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from utpm.data.loading import Dataset
from utpm.data.protocol import split_protocol
from utpm.evaluation.experiment import paired_gap, verdict
from utpm.evaluation.metrics import precision_at_k, unique_top, user_precision
from utpm.evaluation.yardsticks import (
    PLANTED,
    PLANTED_SEEN,
    Blend,
    popularity_counts,
    tag_order,
    tune_blend,
    yardstick_rankings,
)


def test_user_precision_divides_by_min_k_and_c() -> None:
    # C has 2 tags: at K = 3 the denominator is min(3, 2) = 2, so 2 hits give 1.0, not 2/3
    assert user_precision(["a", "x", "b"], {"a", "b"}, 3) == 1.0
    assert user_precision(["a", "x", "y"], {"a", "b"}, 3) == 0.5
    # C larger than K: the denominator is K
    assert user_precision(["a", "x"], {"a", "b", "c", "d"}, 2) == 0.5
    assert user_precision(["q"], {"a"}, 1) == 0.0


def test_duplicate_predictions_count_once_and_p_is_the_top_k_unique() -> None:
    assert unique_top(["a", "a", "b", "a", "c"], 2) == ["a", "b"]
    # ["a", "a", "b"]: P@2 = {a, b} (unique), so both hits count at K = 2
    assert user_precision(["a", "a", "b"], {"a", "b"}, 2) == 1.0


def test_mean_skips_users_with_empty_c_and_counts_them() -> None:
    r = precision_at_k([["a"], ["b"], ["c"]], [{"a"}, set(), {"z"}], 1)
    assert r.value == 0.5 and r.users == 2 and r.skipped_users == 1
    with pytest.raises(ValueError, match="undefined"):
        user_precision(["a"], set(), 1)


def _data() -> Dataset:
    items = pd.DataFrame(
        {"item_id": ["p", "q", "r"], "tags": [["pop"], ["pop", "niche"], ["rare"]], "categories": [["c"], ["c"], ["c"]]}
    )
    rows = []
    for u in range(10):
        # history (first 8): 5 x r ('rare') for even users, 5 x q for odd ones, then 3 x p; labels: p, q
        seq = (["r"] * 5 if u % 2 == 0 else ["q"] * 5) + ["p", "p", "p", "p", "q"]
        rows += [(str(u), it, t, 1) for t, it in enumerate(seq)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"]).astype(
        {"timestamp": np.int64, "label": np.int8}
    )
    return Dataset(items=items, events=ev, users=None)


def test_yardsticks_rank_by_training_popularity_and_own_history() -> None:
    split = split_protocol(_data(), seed=0, test_fraction=0.5)
    train, test = split.indices(test=False), split.indices(test=True)
    pop = yardstick_rankings("mostpop", split, train, test, max_tags=3, limit=3)
    assert all(r[0] == "pop" for r in pop)  # 'pop' is on every label item
    hist = yardstick_rankings("histfreq", split, train, test, max_tags=3, limit=3)
    for i, ranked in zip(test, hist, strict=True):
        own_first = "rare" if int(split.user_ids[i]) % 2 == 0 else "pop"
        assert ranked[0] == own_first
    with pytest.raises(ValueError, match="unknown yardstick"):
        yardstick_rankings("oracle", split, train, test, max_tags=3)


def test_planted_first_is_the_blend_with_the_planted_interests_moved_first() -> None:
    split = split_protocol(_data(), seed=0, test_fraction=0.5)
    train, test = split.indices(test=False), split.indices(test=True)
    blend = yardstick_rankings("blend", split, train, test, max_tags=3, limit=4, blend=(1.0, 0.0))
    # 'niche' is in no history of the even users and below 'pop' for the odd ones
    planted = [{"niche"} for _ in test]
    ranked = yardstick_rankings(PLANTED, split, train, test, max_tags=3, limit=4, blend=(1.0, 0.0), planted=planted)
    for b, r in zip(blend, ranked, strict=True):
        assert r[0] == "niche" and r[1:] == [t for t in b if t != "niche"][:3]
    assert any(b[0] != "niche" for b in blend)  # the reference changed something
    # planted-seen-first moves only the planted tags among the user's history tags: 'niche' is in the
    # odd users' histories (item q), not in the even users'
    seen = yardstick_rankings(PLANTED_SEEN, split, train, test, max_tags=3, limit=4, blend=(1.0, 0.0), planted=planted)
    for i, b, r, p in zip(test, blend, seen, ranked, strict=True):
        assert r == (p if int(split.user_ids[i]) % 2 else b)
    assert {int(split.user_ids[i]) % 2 for i in test} == {0, 1}
    with pytest.raises(ValueError, match="planted interests"):
        yardstick_rankings(PLANTED, split, train, test, max_tags=3, blend=(1.0, 0.0))


def test_yardsticks_break_ties_by_the_models_tag_ids() -> None:
    """`tag_order` is the order of the default model's tag ids (`build_history_vocabularies`: frequency
    among the training users' events, then name), so a yardstick and a model ranking equal scores pick
    the same tag. Here 'a' and 'z' are equally popular labels, but 'z' is in more events."""
    from utpm.training.history import UserSequences, build_history_vocabularies

    items = pd.DataFrame({"item_id": ["x", "y", "w"], "tags": [["a"], ["z"], ["z"]], "categories": [["c"]] * 3})
    rows = [(str(u), it, t, 1) for u in range(10) for t, it in enumerate(["w", "w", "w", "w", "x", "y"])]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"]).astype(
        {"timestamp": np.int64, "label": np.int8}
    )
    split = split_protocol(Dataset(items=items, events=ev, users=None), seed=0, test_fraction=0.5)
    train, test = split.indices(test=False), split.indices(test=True)
    _, tags = build_history_vocabularies(split, UserSequences(split, 3), train, 10, 1)
    order = tag_order(split, train, 3)
    assert sorted(order, key=order.__getitem__) == tags.tokens[2:] == ["z", "a"]
    assert yardstick_rankings("mostpop", split, train, test, max_tags=3, limit=2)[0] == ["z", "a"]


@pytest.mark.parametrize("max_tags", [None, 0, 1, 3])
def test_tag_counts_are_those_of_every_event_counted_one_by_one(max_tags: int | None) -> None:
    """`tag_order` and `popularity_counts` count in numpy what a loop over each user's events gives:
    every event's item's first `max_tags` tags (a tag the busiest item lists twice counts twice;
    `users` counts a user's C once per tag), label 0 and history events in the order only."""
    from collections import Counter

    from tests.datasets import synthetic_dataset

    data = synthetic_dataset(n_users=40, events=30, seed=3)
    busiest = data.items["item_id"] == data.events["item_id"].mode()[0]
    data.items["tags"] = [list(t) + list(t)[:1] if b else t for t, b in zip(data.items["tags"], busiest, strict=True)]
    split = split_protocol(data, seed=0)
    rows = split.indices(test=False)[::2]
    every: Counter[str] = Counter()
    for ragged in (split.history, split.labels):
        for i in rows.tolist():
            for item in ragged.row_codes(i).tolist():
                every.update(split.item_tags.row(item)[:max_tags])
    want_order = [t for t, _ in sorted(every.items(), key=lambda tc: (-tc[1], tc[0]))]
    order = tag_order(split, rows, max_tags)
    assert sorted(order, key=order.__getitem__) == want_order and sorted(order.values()) == list(range(len(order)))
    events: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for i in rows.tolist():
        for tags, y in split.label_items(i, max_tags):
            events.update(tags if y == 1 else [])
        users.update(split.clicked_tags(i, max_tags))
    assert popularity_counts(split, rows, max_tags, "events") == events
    assert popularity_counts(split, rows, max_tags, "users") == users
    assert popularity_counts(split, rows[:0], max_tags) == Counter() and tag_order(split, rows[:0], max_tags) == {}


def test_paired_gap_and_verdict() -> None:
    runs = [
        {"model": m, "loss": "joint", "seed": s, "prec@1": v}
        for m, vals in (("a", [0.1, 0.2, 0.3]), ("b", [0.2, 0.3, 0.4]))
        for s, v in enumerate(vals)
    ]
    mean, std, n = paired_gap(runs, ("a", "joint"), ("b", "joint"), "prec@1")
    assert n == 3 and math.isclose(mean, 0.1) and std < 1e-9
    assert verdict(mean, std) == "holds" and verdict(-0.1, 0.01) == "reversed" and verdict(0.01, 0.02) == "tie"


def _heavy_user_data() -> Dataset:
    """30 users whose last event is item 'a' (tag 'common'), after 4 events of 'h' (tag 'hist'), and
    one heavy user (a crawler) with 500 events of 'b' (tag 'botty'): 100 in its label window."""
    items = pd.DataFrame(
        {"item_id": ["a", "b", "h"], "tags": [["common"], ["botty"], ["hist"]], "categories": [["c"]] * 3}
    )
    rows = [(str(u), it, t, 1) for u in range(30) for t, it in enumerate(["h"] * 4 + ["a"])]
    rows += [("bot", "b", t, 1) for t in range(500)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"]).astype(
        {"timestamp": np.int64, "label": np.int8}
    )
    return Dataset(items=items, events=ev, users=None)


def test_one_heavy_user_does_not_swamp_the_tuned_blends_popularity() -> None:
    """Counted by label items, one crawler's tag is the most popular; counted by users, the tag most
    users click is. The blend tunes which count it uses on the validation users, and so ranks
    'common' first for new users where the event count would rank 'botty'."""
    split = split_protocol(_heavy_user_data(), seed=0, test_fraction=0.0)
    users = [str(u) for u in split.user_ids]
    bot = users.index("bot")
    normal = np.asarray([i for i in range(len(users)) if i != bot])
    train, val, test = np.sort(np.r_[normal[:15], bot]), normal[15:25], normal[25:]
    assert popularity_counts(split, train, 3).most_common(1) == [("botty", 100)]
    assert popularity_counts(split, train, 3, "users").most_common(2) == [("common", 15), ("botty", 1)]
    with pytest.raises(ValueError, match="unknown popularity count"):
        popularity_counts(split, train, 3, "clicks")
    blend = tune_blend(split, train, val, 3)
    assert blend == Blend(0.0, 0.0, "users")
    # told which count to use (`utpm bench start`'s halves, scored on the fold's b_t), it keeps to it
    assert tune_blend(split, train, val, 3, counts=("events",)).popularity == "events"
    ranked = yardstick_rankings("blend", split, train, test, max_tags=3, limit=2, val_rows=val)
    assert all(r[0] == "common" for r in ranked)
    by_events = yardstick_rankings("blend", split, train, test, max_tags=3, limit=2, blend=(0.0, 0.0))
    assert all(r[0] == "botty" for r in by_events)  # what the event count alone would serve


@pytest.mark.parametrize("seed", range(3))
def test_the_blends_grid_search_scores_each_point_as_blend_ranking_ranks(seed: int) -> None:
    """`tune_blend` scores every (a, c) in numpy (`_BlendUsers`); each Prec@k equals, to the bit, that of
    `blend_ranking`'s lists: equal scores (integer counts give many) by the tie order, users with
    fewer candidates than k, with no candidate at all, and with an empty C among them."""
    from collections import Counter

    from utpm.evaluation.yardsticks import BLEND_GRID, _BlendUsers, blend_ranking

    rng = np.random.default_rng(seed)
    tags = [f"t{j}" for j in range(12)]
    order = {t: j for j, t in enumerate(rng.permutation(tags).tolist()[:10])}  # two tags unknown to it
    pop = Counter({t: int(rng.integers(0, 4)) for t in tags[:8]})
    popular = sorted(pop, key=lambda t: (-pop[t], order.get(t, len(order)), t))
    hists, clicked = [], []
    for _ in range(40):
        own = rng.choice(tags, size=int(rng.integers(0, 6)), replace=False).tolist()
        counts = [(int(n), int(rng.integers(1, n + 1))) for n in rng.integers(1, 4, size=len(own))]
        hists.append(dict(zip(own, counts, strict=True)))
        clicked.append(set(rng.choice(tags, size=int(rng.integers(0, 4)), replace=False).tolist()))
    for limit, pops in ((3, popular), (3, popular[:1]), (5, [])):  # few or no popular tags: short lists
        users = _BlendUsers(hists, clicked, pop, pops, limit, order)
        for a in BLEND_GRID[:4]:
            for c in BLEND_GRID[::3]:
                ranked = [blend_ranking(h, pop, pops, a, c, limit, order) for h in hists]
                got = users.precision(a, c, range(1, limit + 1))
                for k in range(1, limit + 1):
                    assert got[k] == precision_at_k(ranked, clicked, k).value, (a, c, k)
