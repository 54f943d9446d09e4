"""Validation of the generic format: one test per class of bad input, plus the happy path."""

from __future__ import annotations

from pathlib import Path

import pytest

from utpm.data import DataError, load_dataset

ITEMS = "item_id,tags,categories,account\ni1,a|b,c1,acc1\ni2,b|c,c2,acc2\ni3,,c1,acc1\n"


def events_csv(rows: list[str]) -> str:
    return "user_id,item_id,timestamp,label\n" + "".join(r + "\n" for r in rows)


GOOD_EVENTS = [f"u{u},i{1 + (u + t) % 3},{100 + t},{(u + t) % 2}" for u in range(5) for t in range(8)]


def write(d: Path, items: str = ITEMS, events: str | None = None, users: str | None = None) -> Path:
    (d / "items.csv").write_text(items, encoding="utf-8")
    (d / "events.csv").write_text(events if events is not None else events_csv(GOOD_EVENTS), encoding="utf-8")
    if users is not None:
        (d / "users.csv").write_text(users, encoding="utf-8")
    return d


def test_good_dataset_loads_with_lists_and_types(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path, users="user_id,gender\nu0,f\nu1,m\n"))
    assert ds.items.loc[0, "tags"] == ["a", "b"]
    assert ds.item_fields == ["categories", "account"]
    assert ds.user_fields == ["gender"]
    assert str(ds.events["timestamp"].dtype) == "int64"
    assert set(ds.events["label"]) == {0, 1}
    assert len(ds.events) == 40


def test_missing_column_names_file_line_and_columns(tmp_path: Path) -> None:
    write(tmp_path, events="user_id,item_id,label\nu1,i1,1\n")
    with pytest.raises(DataError, match=r"events\.csv, line 1: missing column\(s\) \['timestamp'\]"):
        load_dataset(tmp_path)


def test_bad_label_in_a_few_rows_is_dropped_with_a_counted_warning(tmp_path: Path) -> None:
    rows = [*GOOD_EVENTS[:30], "u9,i1,5,2", *GOOD_EVENTS[30:]]
    ds = load_dataset(write(tmp_path, events=events_csv(rows)))
    assert len(ds.events) == 40
    assert any("dropped 1 row(s) with a label that is not 0 or 1 (first at line 32)" in w for w in ds.report.warnings)


def test_events_repeated_exactly_are_kept_and_noted(tmp_path: Path) -> None:
    """A log that wrote some events twice inflated every count the model reads without a word."""
    rows = [*GOOD_EVENTS[:10], GOOD_EVENTS[3], GOOD_EVENTS[3], *GOOD_EVENTS[10:]]
    ds = load_dataset(write(tmp_path, events=events_csv(rows)))
    assert len(ds.events) == 42  # kept: a repeat may be a real one
    assert any("2 event(s) repeat an earlier one exactly (user, item, timestamp, label; first at line 12)" in w
               for w in ds.report.warnings)  # fmt: skip
    assert not any("repeat an earlier one" in w for w in load_dataset(write(tmp_path)).report.warnings)


def test_mostly_bad_labels_is_an_error_naming_the_first_line(tmp_path: Path) -> None:
    rows = ["u1,i1,5,yes", "u1,i2,6,1", "u2,i1,7,maybe"]
    with pytest.raises(DataError, match=r"line 2: a label that is not 0 or 1 \(2 of 3 rows"):
        load_dataset(write(tmp_path, events=events_csv(rows)))


def test_non_integer_timestamp(tmp_path: Path) -> None:
    rows = ["u1,i1,12.5,1", "u1,i2,2020-01-01,1"]
    with pytest.raises(DataError, match=r"line 2: a timestamp that is not an integer"):
        load_dataset(write(tmp_path, events=events_csv(rows)))


def test_integral_floats_written_as_text_are_the_integers_they_name(tmp_path: Path) -> None:
    """A CSV written from a float column ("1.0", "964982703.0"): before, every row was refused as a bad
    label or timestamp, while the same numbers in Parquet were read."""
    as_floats = []
    for row in GOOD_EVENTS:
        user, item, ts, label = row.split(",")
        as_floats.append(f"{user},{item},{ts}.0,{label}.0")
    floats_dir, ints_dir = tmp_path / "floats", tmp_path / "ints"
    floats_dir.mkdir()
    ints_dir.mkdir()
    got = load_dataset(write(floats_dir, events=events_csv(as_floats)))
    assert got.events.equals(load_dataset(write(ints_dir)).events)
    assert not [w for w in got.report.warnings if "events" in w]  # no row dropped


def test_events_with_unknown_items_are_counted_dropped_and_reported_once(tmp_path: Path) -> None:
    rows = [*GOOD_EVENTS, "u1,nope,5,1", "u2,nope2,6,0"]
    ds = load_dataset(write(tmp_path, events=events_csv(rows)))
    unknown = [w for w in ds.report.warnings if "not in the items file" in w]
    assert len(unknown) == 1 and "dropped 2 event(s)" in unknown[0] and "line 42" in unknown[0]
    assert "nope" not in set(ds.events["item_id"])


def test_items_without_tags_are_reported(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path))
    assert any("1 of 3 item(s) have no tags" in w for w in ds.report.warnings)


def test_duplicate_item_ids_keep_the_first_row(tmp_path: Path) -> None:
    items = ITEMS + "".join(f"j{i},x,c,a\n" for i in range(30)) + "i1,zzz,c9,acc9\n"
    ds = load_dataset(write(tmp_path, items=items))
    assert ds.items.set_index("item_id").loc["i1", "tags"] == ["a", "b"]
    assert any("duplicate item_id" in w and "line 35" in w for w in ds.report.warnings)


def test_duplicate_user_ids_in_users_file(tmp_path: Path) -> None:
    users = "user_id,age\n" + "".join(f"u{i},{20 + i}\n" for i in range(30)) + "u0,99\n"
    ds = load_dataset(write(tmp_path, users=users))
    assert ds.users is not None
    assert ds.users.set_index("user_id").loc["u0", "age"] == "20"
    assert any("duplicate user_id" in w for w in ds.report.warnings)


def test_a_user_column_named_like_a_history_field_is_refused(tmp_path: Path) -> None:
    """Before, a users column `clicked_tags` silently became the clicked_tags field (single-valued),
    in place of the tags of the user's clicked items: the model's main input."""
    write(tmp_path)
    (tmp_path / "users.csv").write_text("user_id,clicked_tags,age\nu1,x,30\n")
    with pytest.raises(DataError, match=r"users\.csv, line 1: user column\(s\) \['clicked_tags'\] have the name"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("item_id,tags,categories,tags", r"column\(s\) \['tags'\] appear more than once"),  # was clicked_tags.1
        ("item_id,tags, ,categories", r"column 3 has values but no name"),  # was clicked_Unnamed: 2
    ],
)
def test_a_header_pandas_would_rename_is_an_error_naming_it(tmp_path: Path, header: str, problem: str) -> None:
    write(tmp_path)
    (tmp_path / "items.csv").write_text(f"{header}\ni1,a|b,x,c\ni2,b,y,c\n")
    with pytest.raises(DataError, match=rf"items\.csv, line 1: {problem}"):
        load_dataset(tmp_path)


def test_a_trailing_comma_adds_no_field(tmp_path: Path) -> None:
    """Before, `item_id,tags,categories,` made a field `clicked_Unnamed: 3` of empty values."""
    write(tmp_path)
    items = (tmp_path / "items.csv").read_text().splitlines()
    (tmp_path / "items.csv").write_text("\n".join(f"{line}," for line in items) + "\n")
    ds = load_dataset(tmp_path)
    assert ds.item_fields == ["categories", "account"]
    assert any("without a name or a value (a trailing comma?)" in w for w in ds.report.warnings)


def test_tags_written_with_another_separator_are_noted(tmp_path: Path) -> None:
    """Before, "a,b" (quoted) and "a;b" cells were read as the single tags 'a,b' and 'a;b' without a word."""
    write(tmp_path, items='item_id,tags,categories\ni1,"a,b",c1\ni2,b;c,c2\ni3,"c,a",c1\n')
    warnings = load_dataset(tmp_path).report.warnings
    assert any("no tags cell holds '|' but 2 of 3 hold ','" in w for w in warnings), warnings
    write(tmp_path)  # '|'-lists: nothing to say
    assert not any("split on" in w for w in load_dataset(tmp_path).report.warnings)


def test_crlf_line_endings_load_like_lf(tmp_path: Path) -> None:
    (tmp_path / "lf").mkdir()
    lf = load_dataset(write(tmp_path / "lf"))
    crlf_dir = tmp_path / "crlf"
    crlf_dir.mkdir()
    write(crlf_dir, items=ITEMS.replace("\n", "\r\n"), events=events_csv(GOOD_EVENTS).replace("\n", "\r\n"))
    crlf = load_dataset(crlf_dir)
    assert crlf.items["tags"].tolist() == lf.items["tags"].tolist()
    assert crlf.items["account"].tolist() == [["acc1"], ["acc2"], ["acc1"]]  # no stray '\r'
    assert crlf.events.equals(lf.events)
    assert any("CRLF" in w for w in crlf.report.warnings)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "items.csv").write_bytes(ITEMS.encode() + b"i4,caf\xe9,c1,acc1\n")
    with pytest.raises(DataError, match=r"items\.csv, line 5: bytes that are not UTF-8 \(byte 0xe9"):
        load_dataset(tmp_path)


def test_malformed_csv_row_is_one_clear_error(tmp_path: Path) -> None:
    write(tmp_path, events="user_id,item_id,timestamp,label\nu1,i1,5,1\nu1,i2,6,1,extra,more\n")
    with pytest.raises(DataError, match=r"line 3"):
        load_dataset(tmp_path)


def test_no_events_file(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text(ITEMS)
    with pytest.raises(DataError, match=r"no events\.csv or events\.parquet"):
        load_dataset(tmp_path)


def test_a_table_in_both_forms_is_an_error_not_a_silent_choice(tmp_path: Path) -> None:
    """Before, events.parquet was read and events.csv beside it ignored, whichever was the stale one."""
    write(tmp_path)
    (tmp_path / "events.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"both events\.parquet and events\.csv here"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("form", ["parquet datetime", "parquet zoned datetime", "csv iso 8601"])
def test_event_times_as_datetimes_order_the_events_as_seconds_do(tmp_path: Path, form: str) -> None:
    """Before, a Parquet timestamp column (a warehouse's usual type) or ISO 8601 text was refused: "a
    timestamp that is not an integer (40 of 40 rows)". Now epoch milliseconds, in the same order."""
    import pandas as pd

    from utpm.data.protocol import split_protocol

    seconds = load_dataset(write(tmp_path))
    other = tmp_path / "times"
    other.mkdir()
    (other / "items.csv").write_text(ITEMS)
    events = pd.read_csv(tmp_path / "events.csv", dtype={"user_id": str})
    times = pd.to_datetime(events["timestamp"], unit="s")
    if form == "parquet datetime":
        events.assign(timestamp=times).to_parquet(other / "events.parquet")
    elif form == "parquet zoned datetime":
        events.assign(timestamp=times.dt.tz_localize("UTC").dt.tz_convert("Asia/Shanghai")).to_parquet(
            other / "events.parquet"
        )
    else:
        events.assign(timestamp=times.dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(other / "events.csv", index=False)
    loaded = load_dataset(other)
    assert loaded.events["timestamp"].tolist() == (seconds.events["timestamp"] * 1000).tolist()
    a, b = split_protocol(seconds, seed=0), split_protocol(loaded, seed=0)
    assert [a.features(i) for i in range(a.n_users)] == [b.features(i) for i in range(b.n_users)]


def test_parquet_loads_like_csv(tmp_path: Path) -> None:
    csv_ds = load_dataset(write(tmp_path))
    pq = tmp_path / "pq"
    pq.mkdir()
    import pandas as pd

    pd.read_csv(tmp_path / "items.csv", dtype=str, keep_default_na=False).to_parquet(pq / "items.parquet")
    pd.read_csv(tmp_path / "events.csv").to_parquet(pq / "events.parquet")
    pq_ds = load_dataset(pq)
    assert pq_ds.items["tags"].tolist() == csv_ds.items["tags"].tolist()
    assert pq_ds.events.equals(csv_ds.events)


def test_parquet_typed_as_a_data_engineer_writes_it_loads_like_csv(tmp_path: Path) -> None:
    """list<string> tag columns, integer ids, an integer column with nulls (read by pandas as float):
    before, tags became one value "['a' 'b']", ids "3.0", and a null user id crashed the protocol."""
    import pandas as pd

    csv_ds = load_dataset(write(tmp_path))
    items = pd.read_csv(tmp_path / "items.csv", dtype=str, keep_default_na=False)
    events = pd.read_csv(tmp_path / "events.csv")
    pq = tmp_path / "pq"
    pq.mkdir()
    items.assign(item_id=items.item_id.str.removeprefix("i").astype(int), tags=items.tags.str.split("|")).to_parquet(
        pq / "items.parquet"
    )
    users = events.user_id.str.removeprefix("u").astype(float)  # u0..u4 -> 0.0..4.0
    events.assign(user_id=users, item_id=events.item_id.str.removeprefix("i").astype(int)).to_parquet(
        pq / "events.parquet"
    )
    pq_ds = load_dataset(pq)
    assert pq_ds.items["tags"].tolist() == csv_ds.items["tags"].tolist()
    assert pq_ds.items["item_id"].tolist() == ["1", "2", "3"]
    assert sorted(set(pq_ds.events["user_id"])) == ["0", "1", "2", "3", "4"]
    # one null user id: dropped as empty and counted, like an empty CSV cell
    with_null = users.where(events.index != 0)
    events.assign(user_id=with_null, item_id=events.item_id.str.removeprefix("i").astype(int)).to_parquet(
        pq / "events.parquet"
    )
    ds = load_dataset(pq)
    assert len(ds.events) == len(events) - 1
    assert any("dropped 1 row(s) with an empty user_id (first at line 1)" in w for w in ds.report.warnings)


def test_cli_reports_bad_file_without_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from utpm_cli.main import app

    write(tmp_path, events="user_id,item_id,label\nu1,i1,1\n")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert "missing column(s) ['timestamp']" in result.output
    assert "Traceback" not in result.output


def test_inspect_gives_the_tags_per_clicked_item_to_choose_n_by(tmp_path: Path) -> None:
    """A preset's N counts each item's first N tags only; inspect now says how many the clicked items have."""
    import json

    from typer.testing import CliRunner

    from utpm_cli.main import app

    result = CliRunner().invoke(app, ["inspect", str(write(tmp_path))])
    assert result.exit_code == 0, result.output
    # GOOD_EVENTS' clicks fall on i1 (a|b), i2 (b|c) and i3 (no tags, left out)
    info = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert info["tags_per_clicked_item"] == {"median": 2.0, "p90": 2.0, "max": 2}


def test_inspect_names_a_user_with_a_large_share_of_the_clicks(tmp_path: Path) -> None:
    """A crawler's clicks would be most of an event-counted popularity: inspect gives the clicks per
    user and notes a user with 5% or more of them (here 100 of 138 clicks, among 20 users)."""
    import json

    from typer.testing import CliRunner

    from utpm_cli.main import app

    rows = [f"u{u},i{1 + t % 2},{t},1" for u in range(19) for t in range(2)]
    rows += [f"crawler,i2,{t},1" for t in range(100)]
    write(tmp_path, events="user_id,item_id,timestamp,label\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert info["clicks_per_user"] == {
        "median": 2.0,
        "p99": 81.4,
        "max": 100,
        "heaviest_user": "crawler",
        "heaviest_share": round(100 / 138, 4),
    }
    assert "note: user 'crawler' has 72% of the label-1 events (100; median 2)" in result.stderr
    # the same log without the crawler: no note
    write(tmp_path, events="user_id,item_id,timestamp,label\n" + "\n".join(rows[:38]) + "\n")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0 and "note: user" not in result.stderr
