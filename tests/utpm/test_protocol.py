"""The paper's protocol: time-ordered 80/20 history/label split, seeded user split, no leaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.datasets import synthetic_dataset
from utpm.data import load_dataset
from utpm.data.loading import Dataset
from utpm.data.protocol import current_features, split_protocol
from utpm.features.history import FieldStats, parse_field
from utpm.features.spec import FieldKind
from utpm.training.history import UserSequences


def tiny_dataset() -> Dataset:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "tags": [["x", "y"], ["y"], ["z"], ["w"], []],
            "categories": [["c1"], ["c2"], ["c1"], ["c3"], ["c2"]],
        }
    )
    # user 1: 10 events, times deliberately out of order in the file
    ev = pd.DataFrame(
        {
            "user_id": ["1"] * 10 + ["2"] * 5 + ["3"],
            "item_id": ["a", "b", "c", "d", "e", "a", "b", "c", "d", "e", "a", "b", "c", "d", "a", "a"],
            "timestamp": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 1],
            "label": [1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1],
        }
    ).astype({"timestamp": np.int64, "label": np.int8})
    users = pd.DataFrame({"user_id": ["1", "2"], "gender": ["f", "m"]})
    return Dataset(items=items, events=ev, users=users)


def test_history_is_the_first_80_percent_in_time_and_labels_the_rest() -> None:
    split = split_protocol(tiny_dataset(), seed=0)
    assert list(split.user_ids) == ["1", "2"]  # user 3 has one event: no history -> dropped
    assert split.dropped_users == 1
    u1 = 0
    # user 1 by time: e(0) d(1) c(2) b(3) a(4) | e(5) d(6) c(7) b(8) a(9); 8 history, 2 labels
    assert [(tags, y) for tags, y in split.label_items(u1)] == [(["y"], 1), (["x", "y"], 1)]
    feats = split.features(u1)
    # history by time: e0 d1 c2 b3(0) a4 e5 d6 c7(0); clicked tags in order w z x y w -> recent-unique
    assert feats["clicked_tags"] == ["z", "x", "y", "w"]
    assert feats["unclicked_tags"] == ["y", "z"]
    assert feats["clicked_categories"] == ["c1", "c2", "c3"]  # c2 c3 c1 c1 c2 c3
    assert feats["gender"] == ["f"]
    assert split.field_kinds["gender"] is FieldKind.SINGLE


def test_no_label_event_leaks_into_history(movielens_dir: Path) -> None:
    ds = load_dataset(movielens_dir)
    split = split_protocol(ds, seed=3)
    ev = ds.events.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    for i in range(0, split.n_users, 37):
        uid = split.user_ids[i]
        mine = ev[ev["user_id"] == uid]
        n_hist = int(np.floor(len(mine) * 0.8))
        label_part = mine.iloc[n_hist:]
        labels = split.labels.row(i)
        assert labels == label_part["item_id"].tolist()
        # the label period starts no earlier than the history ends
        assert label_part["timestamp"].min() >= mine.iloc[:n_hist]["timestamp"].max()
        hist_clicked = mine.iloc[:n_hist]
        hist_clicked = hist_clicked[hist_clicked["label"] == 1]
        tags_of = ds.items.set_index("item_id")["tags"]
        allowed = {t for it in hist_clicked["item_id"] for t in tags_of[it]}
        assert set(split.features(i).get("clicked_tags", [])) <= allowed


def test_clicked_tags_keep_the_most_recent_unique_values() -> None:
    split = split_protocol(tiny_dataset(), seed=0, max_history=2)
    assert all(len(v) <= 2 for v in split.features(0).values())
    full = split_protocol(tiny_dataset(), seed=0)
    assert split.features(0)["clicked_tags"] == full.features(0)["clicked_tags"][-2:]


def test_a_request_built_from_the_log_carries_each_multi_valued_field_with_its_counts() -> None:
    split = split_protocol(tiny_dataset(), seed=0)
    # user 1's history by time: e0 d1 c2 b3(0) a4 e5 d6 c7(0); clicked tags w z x y w, categories
    # c2 c3 c1 c1 c2 c3; unclicked tags y z
    assert split.request(0) == {
        # w: two clicks of one item (d), so its distinct items are sent with its count
        "clicked_tags": {"z": 1, "x": 1, "y": 1, "w": {"count": 2, "items": 1}},
        "clicked_categories": {"c1": 2, "c2": 2, "c3": 2},
        "unclicked_tags": {"y": 1, "z": 1},
        "gender": ["f"],
        "clicked_items": ["c", "a", "e", "d"],
    }
    # the counts are of the whole history, also for a value kept among the most recent max_history
    assert split_protocol(tiny_dataset(), seed=0, max_history=2).counted("clicked_tags", 0) == {"y": 1, "w": 2}
    # every event: ... b8 a9 add y, x y (a clicked twice, b once)
    now = current_features(tiny_dataset())
    assert now.request(list(now.user_ids).index("1"))["clicked_tags"] == {
        "z": 1,
        "w": {"count": 2, "items": 1},
        "x": {"count": 2, "items": 1},
        "y": {"count": 3, "items": 2},
    }


def test_counts_are_occurrences_among_the_history_items_in_the_fields_recency_order() -> None:
    split = split_protocol(synthetic_dataset(n_users=10, events=20), seed=0)
    for i in range(split.n_users):
        lo, hi = split.history.offsets[i], split.history.offsets[i + 1]
        history = list(zip(split.history.codes[lo:hi], split.history_values[lo:hi], strict=True))
        for name, label in (("clicked_tags", 1), ("unclicked_tags", 0)):
            counted = split.counted(name, i)
            assert list(counted) == split.fields[name].row(i)  # oldest last occurrence first
            tags = [t for item, y in history if y == label for t in split.item_tags.row(int(item))]
            assert counted == {t: tags.count(t) for t in set(tags)}


def test_a_request_parses_to_the_counts_and_distinct_items_training_reads() -> None:
    """What the service parses from a request built from the log is what training counted for each
    clicked tag: its occurrences and the distinct items that carried it (a list or a bare count
    cannot tell two clicks of one item from one click each of two)."""
    data = synthetic_dataset(n_users=20, events=40)
    split = split_protocol(data, seed=0, max_history=1000)
    seqs = UserSequences(split, n_tags_per_item=max(map(len, data.items["tags"])))
    repeated = 0
    for i in range(split.n_users):
        trained = seqs.stats(i).get("clicked_tags", FieldStats())
        sent = parse_field("clicked_tags", split.request(i).get("clicked_tags"))
        as_trained = dict(zip(trained.values, zip(trained.count, trained.distinct, strict=True), strict=True))
        assert dict(zip(sent.values, zip(sent.count, sent.distinct, strict=True), strict=True)) == as_trained
        repeated += sum(c != d for c, d in zip(trained.count, trained.distinct, strict=True))
    assert repeated > 0  # the data has tags clicked more than once on one item
    # without the items (the request of before 2026-12-07), every count is a bare number
    assert all(
        split.request(i, tag_items=False)["clicked_tags"] == split.counted("clicked_tags", i)
        for i in range(split.n_users)
        if "clicked_tags" in split.request(i)
    )


def test_clicked_items_are_the_most_recent_distinct_ones_oldest_first_by_last_click() -> None:
    split = split_protocol(tiny_dataset(), seed=0)
    # user 1's clicked history items by time: e d c a e d
    assert split.clicked_items(0) == ["c", "a", "e", "d"] == split.request(0)["clicked_items"]
    assert split_protocol(tiny_dataset(), seed=0, max_items=2).clicked_items(0) == ["e", "d"]
    # every event: e d c a e d b a
    now = current_features(tiny_dataset())
    assert now.request(list(now.user_ids).index("1"))["clicked_items"] == ["c", "e", "d", "b", "a"]
    assert current_features(tiny_dataset(), max_items=2).request(0)["clicked_items"] == ["b", "a"]


def test_user_split_is_deterministic_per_seed_and_depends_on_it(movielens_dir: Path) -> None:
    ds = load_dataset(movielens_dir)
    a, b, c = (split_protocol(ds, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.is_test, b.is_test)
    assert not np.array_equal(a.is_test, c.is_test)
    assert abs(a.is_test.mean() - 0.2) < 0.01
    for name in a.fields:
        assert np.array_equal(a.fields[name].codes, b.fields[name].codes)


def test_ragged_take_selects_rows() -> None:
    split = split_protocol(tiny_dataset(), seed=0)
    sub = split.fields["clicked_tags"].take(np.array([1, 0]))
    assert sub.row(0) == split.fields["clicked_tags"].row(1)
    assert sub.row(1) == split.fields["clicked_tags"].row(0)


def test_recent_unique_values_and_their_counts_match_a_per_user_reference() -> None:
    """The compiled kernels of every multi-valued field, against the rule written out per user: each
    value once at its most recent occurrence, the `max_history` most recent, oldest first; its count
    over all of the user's occurrences. Random items of 0-4 values, users with no events among them."""
    from utpm.data.protocol import Ragged, _history_field, _occurrences, _value_counts

    rng = np.random.default_rng(7)
    n_users, n_values, n_items = 40, 15, 30
    lengths = rng.integers(0, 5, n_items)
    item_values = Ragged(
        np.concatenate([[0], np.cumsum(lengths)]),
        rng.integers(0, n_values, int(lengths.sum())),
        np.array([f"v{i}" for i in range(n_values)], dtype=object),
    )
    user_idx = np.sort(rng.choice(np.arange(0, n_users, 2), 400))  # odd users have no events
    item_idx = rng.integers(0, n_items, len(user_idx))
    for max_history in (1, 3, 100):
        expanded = _occurrences(user_idx, item_idx, item_values)
        field = _history_field(*expanded, item_values.values, n_users, max_history)
        counts = _value_counts(field, *expanded)
        for u in range(n_users):
            occurrences = [
                int(c)
                for i in item_idx[user_idx == u]
                for c in item_values.codes[item_values.offsets[i] : item_values.offsets[i + 1]]
            ]
            recent = list(dict.fromkeys(reversed(occurrences)))[:max_history][::-1]
            lo, hi = field.offsets[u], field.offsets[u + 1]
            assert field.codes[lo:hi].tolist() == recent
            assert counts[lo:hi].tolist() == [occurrences.count(c) for c in recent]
