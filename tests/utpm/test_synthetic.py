"""Tests for the synthetic WeChat-like generator (tiny sizes: each run takes well under a second)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from utpm.data import load_dataset, synthetic
from utpm.data.synthetic import SyntheticReport, generate_synthetic

SMALL = {"n_tags": 2000, "n_users": 200, "events_per_user": 50}


def _small(out: Path, seed: int, progress: Callable[[str, int, int], None] | None = None) -> SyntheticReport:
    return generate_synthetic(
        out,
        n_tags=SMALL["n_tags"],
        n_users=SMALL["n_users"],
        events_per_user=SMALL["events_per_user"],
        seed=seed,
        progress=progress,
    )


DATA_FILES = ("items.parquet", "events.parquet", "users.parquet", "truth.csv", "tags.parquet")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticReport, list[tuple[str, int, int]]]:
    calls: list[tuple[str, int, int]] = []
    out = tmp_path_factory.mktemp("synth")
    rep = _small(out, 0, lambda s, d, t: calls.append((s, d, t)))
    return out, rep, calls


@pytest.fixture(scope="module")
def frames(run: tuple[Path, SyntheticReport, list[tuple[str, int, int]]]) -> dict[str, pd.DataFrame]:
    out = run[0]
    return {
        "items": pd.read_parquet(out / "items.parquet"),
        "events": pd.read_parquet(out / "events.parquet"),
        "users": pd.read_parquet(out / "users.parquet"),
        "tags": pd.read_parquet(out / "tags.parquet"),
        "truth": pd.read_csv(out / "truth.csv", dtype=str),
    }


def _interest_hits(frames: dict[str, pd.DataFrame]) -> pd.Series:
    """Per event: does the shown item carry one of the user's planted interest tags?"""
    item_tags = frames["items"].set_index("item_id")["tags"].str.split("|")
    truth = frames["truth"].groupby("user_id")["tag"].agg(set)
    ev = frames["events"]
    return pd.Series(
        [bool(truth.get(u, set()) & set(item_tags[i])) for u, i in zip(ev.user_id, ev.item_id, strict=True)],
        index=ev.index,
    )


def test_files_schemas_and_report(run: tuple[Path, SyntheticReport, list[tuple[str, int, int]]]) -> None:
    out, rep, _ = run
    for name in (*DATA_FILES, "meta.json"):
        assert (out / name).is_file(), name
        assert rep.paths[name] == out / name
    s = pa.string()
    assert pq.read_schema(out / "items.parquet").types == [s, s, s, s]
    assert pq.read_schema(out / "items.parquet").names == ["item_id", "tags", "categories", "account"]
    ev_schema = pq.read_schema(out / "events.parquet")
    assert ev_schema.names == ["user_id", "item_id", "timestamp", "label"]
    assert ev_schema.types == [s, s, pa.int64(), pa.int8()]
    assert pq.read_schema(out / "users.parquet").names == ["user_id", "gender", "age", "city"]
    assert rep.rows["events"] == SMALL["n_users"] * SMALL["events_per_user"]
    assert rep.rows["users"] == SMALL["n_users"] and rep.rows["tags"] == SMALL["n_tags"]
    assert rep.seconds > 0 and rep.peak_rss_mb > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["n_tags"] == SMALL["n_tags"] and meta["params"]["seed"] == 0
    assert meta["report"]["rows"] == rep.rows


def test_progress_reaches_the_end(run: tuple[Path, SyntheticReport, list[tuple[str, int, int]]]) -> None:
    calls = run[2]
    assert ("users", SMALL["n_users"], SMALL["n_users"]) == calls[-1]
    assert {s for s, _, _ in calls} == {"items", "users"}


def test_items_have_1_to_5_known_tags_mostly_from_their_category(frames: dict[str, pd.DataFrame]) -> None:
    items, tags = frames["items"], frames["tags"]
    lists = items["tags"].str.split("|")
    assert lists.map(len).between(1, 5).all()
    assert lists.map(lambda t: len(set(t)) == len(t)).all()  # no duplicate tag in an item
    assert items["item_id"].is_unique
    assert not items["categories"].str.contains("|", regex=False).any()
    assert items["account"].str.startswith("acc").all()
    # every tag of the vocabulary occurs in some item (the default n_items leaves room for it)
    flat = lists.explode()
    assert set(flat) == set(tags["tag"])
    tag_cat = tags.set_index("tag")["category"]
    own = (tag_cat.reindex(flat.to_numpy()).to_numpy() == items.loc[flat.index, "categories"].to_numpy()).mean()
    assert own > 0.85
    # accounts are tied to a category
    assert (items.groupby("account")["categories"].nunique() == 1).all()


def test_tag_popularity_is_skewed(frames: dict[str, pd.DataFrame]) -> None:
    counts = frames["items"]["tags"].str.split("|").explode().value_counts()
    top_share = counts.iloc[: len(counts) // 100].sum() / counts.sum()
    assert top_share > 0.05  # the top 1% of tags carry far more than 1% of the occurrences


def test_events_reference_known_items_and_users(frames: dict[str, pd.DataFrame]) -> None:
    ev = frames["events"]
    assert ev["item_id"].isin(frames["items"]["item_id"]).all()
    assert ev["user_id"].isin(frames["users"]["user_id"]).all()
    assert frames["users"]["user_id"].is_unique
    assert set(ev["label"].unique()) == {0, 1}
    assert set(frames["users"]["gender"]) <= set(synthetic.GENDERS)
    assert set(frames["users"]["age"]) <= set(synthetic.AGES)


def test_timestamps_are_ordered_per_user(frames: dict[str, pd.DataFrame]) -> None:
    ev = frames["events"]
    assert ev.groupby("user_id", sort=False)["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    lo = synthetic.EVENTS_START
    assert ev["timestamp"].between(lo, lo + synthetic.EVENTS_SPAN_S).all()
    assert ev.groupby("user_id").size().nunique() > 1  # users differ in activity


def test_truth_is_a_few_tags_in_a_few_categories(frames: dict[str, pd.DataFrame]) -> None:
    truth, tags = frames["truth"], frames["tags"]
    per_user = truth.groupby("user_id")["tag"]
    assert per_user.size().between(1, synthetic.INTEREST_TAGS_RANGE[1]).all()
    assert per_user.size().mean() > 4
    assert not truth.duplicated().any()
    cats = truth["tag"].map(tags.set_index("tag")["category"])
    assert cats.groupby(truth["user_id"]).nunique().max() <= 3


def test_clicks_are_explained_by_an_interest_tag(frames: dict[str, pd.DataFrame]) -> None:
    hit = _interest_hits(frames)
    label = frames["events"]["label"]
    assert hit[label == 1].mean() > 0.8  # clicks mostly on items carrying an interest tag
    assert (~hit[label == 0]).mean() > 0.8  # non-clicks mostly on items without one
    assert 0.25 < hit.mean() < 0.5  # a good fraction of impressions can be clicked


def test_same_seed_same_files_other_seed_differs(
    tmp_path: Path, run: tuple[Path, SyntheticReport, list[tuple[str, int, int]]]
) -> None:
    first = run[0]
    _small(tmp_path / "again", 0)
    for name in DATA_FILES:
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    _small(tmp_path / "other", 1)
    for name in ("events.parquet", "truth.csv", "items.parquet"):
        assert (first / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_chunks_stream_into_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "USER_CHUNK", 64)
    rep = generate_synthetic(tmp_path, n_tags=500, n_users=200, events_per_user=7, seed=3)
    pf = pq.ParquetFile(tmp_path / "events.parquet")
    assert pf.metadata.num_row_groups == 4  # 64 + 64 + 64 + 8 users
    assert pf.metadata.num_rows == rep.rows["events"] == 1400
    users = pd.read_parquet(tmp_path / "users.parquet")
    assert users["user_id"].is_unique and len(users) == 200
    ev = pd.read_parquet(tmp_path / "events.parquet")
    assert np.array_equal(ev["user_id"].unique(), users["user_id"].to_numpy())


def test_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path, n_tags=100, n_users=0)
    # checked before any default is derived from it (a negative count once failed as "float NaN")
    with pytest.raises(ValueError, match=r"must be >= 1, got -5, 10, 100"):
        generate_synthetic(tmp_path, n_tags=-5, n_users=10)
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path, n_tags=100, n_users=10, n_items=10, n_categories=20)


def test_loads_cleanly_with_the_project_loader(run: tuple[Path, SyntheticReport, list[tuple[str, int, int]]]) -> None:
    out, rep, _ = run
    ds = load_dataset(out)
    assert ds.report.warnings == []
    assert len(ds.events) == rep.rows["events"] and len(ds.items) == rep.rows["items"]
    assert ds.item_fields == ["categories", "account"]
    assert ds.user_fields == ["gender", "age", "city"]
