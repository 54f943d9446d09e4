"""Load and validate a data set in the generic format (docs/data-format.md).

A directory holds `items`, `events` and optionally `users`, each as `.csv` or `.parquet`.
Loading is strict about the shape of a file (missing columns, bytes that are not UTF-8, rows that
cannot be parsed): those raise one `DataError` naming file, line and problem. A usable file with a
few bad rows (at most `MAX_BAD_FRACTION` of them) loads; the rows are dropped and counted in one
warning that names the first bad line.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utpm.data.errors import DataError, LoadReport
from utpm.features.values import clean_values

log = logging.getLogger(__name__)

MAX_BAD_FRACTION = 0.05
ITEM_COLUMNS = ("item_id", "tags", "categories")
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "label")
LIST_SEP = "|"
_INT_RE = re.compile(r"^\s*-?\d+\s*$")


@dataclass
class Dataset:
    """A validated data set.

    items: one row per item, `item_id` (str) plus one column of `list[str]` per multi-valued item
        field (`tags`, `categories`, and any extra such as `account`).
    events: `user_id` (str), `item_id` (str), `timestamp` (int64), `label` (int8), every item known.
    users: `user_id` plus one str column per single-valued user field, or None.
    """

    items: pd.DataFrame
    events: pd.DataFrame
    users: pd.DataFrame | None
    report: LoadReport = field(default_factory=LoadReport)
    source: str = ""

    @property
    def item_fields(self) -> list[str]:
        """Multi-valued item columns other than tags (categories, account, ...)."""
        return [c for c in self.items.columns if c not in ("item_id", "tags")]

    @property
    def user_fields(self) -> list[str]:
        return [] if self.users is None else [c for c in self.users.columns if c != "user_id"]


def find_table(directory: Path, name: str, required: bool = True) -> Path | None:
    """`name.parquet` or `name.csv` in `directory`; both is an error, since either could be the stale one."""
    found = [p for p in (directory / f"{name}.parquet", directory / f"{name}.csv") if p.exists()]
    if len(found) == 2:
        raise DataError(directory, f"both {name}.parquet and {name}.csv here: keep the one the data set is in")
    if found:
        return found[0]
    if required:
        raise DataError(directory, f"no {name}.csv or {name}.parquet here")
    return None


def _first_non_utf8_line(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return n, f"byte 0x{raw[e.start]:02x} at column {e.start + 1}"
    return 0, ""


def read_table(path: Path, report: LoadReport | None = None) -> pd.DataFrame:
    """Read a CSV (every column as str) or Parquet file; `_line` holds each row's line in the file."""
    if path.suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(path, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
        df["_line"] = np.arange(1, len(df) + 1)  # Parquet has no lines: the row number stands in
        return df
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"\xef\xbb\xbf") and report is not None:
        report.warn(f"{path}: starts with a UTF-8 byte-order mark; ignored")
    if b"\r\n" in head and report is not None:
        report.warn(f"{path}: CRLF (Windows) line endings; read as plain newlines")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig", engine="c")
    except UnicodeDecodeError:
        line, what = _first_non_utf8_line(path)
        raise DataError(path, f"bytes that are not UTF-8 ({what}); save the file as UTF-8", line) from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "the file is empty (no header line)", 1) from None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        raise DataError(path, f"cannot parse CSV: {e}", int(m.group(1)) if m else None) from None
    df.columns = [str(c).strip() for c in df.columns]
    df = _header_names(df, path, head, report)
    df = df.apply(lambda s: s.str.strip())  # also drops a stray '\r' from a mixed-ending file
    df["_line"] = np.arange(2, len(df) + 2)  # line 1 is the header
    return df


def _header_names(df: pd.DataFrame, path: Path, head: bytes, report: LoadReport | None) -> pd.DataFrame:
    """The header's own names, not pandas' renaming of them: a name given twice ("tags", "tags.1")
    is an error, and a column without a name ("Unnamed: 3") is dropped when it holds no value (a
    trailing comma) and an error otherwise; either would otherwise become a feature field."""
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    names = [n.strip() for n in next(csv.reader([first]), [])]
    if len(names) != len(df.columns):
        return df  # a quoted line break in the header: leave pandas' names
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise DataError(path, f"column(s) {twice} appear more than once in the header", 1)
    unnamed = [i for i, n in enumerate(names) if not n]
    for i in unnamed:
        if (df.iloc[:, i].str.strip() != "").any():
            raise DataError(path, f"column {i + 1} has values but no name in the header", 1)
    if unnamed:
        if report is not None:
            report.warn(f"{path}: {len(unnamed)} column(s) without a name or a value (a trailing comma?); ignored")
        df = df.drop(columns=[df.columns[i] for i in unnamed])
    df.columns = [n for n in names if n]
    return df


def _require_columns(df: pd.DataFrame, path: Path, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = [c for c in df.columns if c != "_line"]
        raise DataError(path, f"missing column(s) {missing}; found {found}", 1)


def _drop_bad(df: pd.DataFrame, bad: pd.Series, path: Path, problem: str, report: LoadReport) -> pd.DataFrame:
    """Drop rows flagged `bad`; raise if too many of them to call the file usable."""
    n_bad = int(bad.sum())
    if n_bad == 0:
        return df
    first = int(df.loc[bad, "_line"].iloc[0])
    if n_bad > MAX_BAD_FRACTION * len(df):
        raise DataError(path, f"{problem} ({n_bad} of {len(df)} rows; first shown here)", first)
    report.warn(f"{path}: dropped {n_bad} row(s) with {problem} (first at line {first})")
    return df.loc[~bad]


def _to_int(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as int64 with 0 for bad ones, bad mask) for a str or numeric column."""
    if pd.api.types.is_integer_dtype(s):
        return s.astype(np.int64), pd.Series(False, index=s.index)
    if pd.api.types.is_float_dtype(s):
        bad = s.isna() | (s != np.floor(s))
        return s.where(~bad, 0).astype(np.int64), bad
    text = s.astype(str)
    bad = ~text.str.match(_INT_RE)
    if bad.any():  # "1.0" or "964982703.0" (a float column written as text) is the integer it names
        number = pd.to_numeric(text.where(bad), errors="coerce")
        integral = np.isfinite(number) & (number == np.floor(number)) & (number.abs() < 2**63)
        text = text.where(~integral, number.where(integral, 0).astype(np.int64).astype(str))
        bad &= ~integral
    return pd.to_numeric(text.where(~bad, "0")).astype(np.int64), bad


def _to_time(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Event times as int64 (they only order a user's events): integers as they are; a datetime column
    (Parquet's timestamp type) or a column of ISO 8601 times as epoch milliseconds (UTC unless zoned)."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return _epoch_ms(s)
    values, bad = _to_int(s)
    if bad.all() and len(s):  # no integer at all: times written as text?
        times = pd.to_datetime(s.astype(str), format="ISO8601", utc=True, errors="coerce")
        if times.notna().any():
            return _epoch_ms(times)
    return values, bad


def _epoch_ms(times: pd.Series) -> tuple[pd.Series, pd.Series]:
    bad = times.isna()
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    filled = times.where(~bad, pd.Timestamp(0, tz="UTC"))
    return filled.dt.as_unit("ms").astype(np.int64), bad


def split_list(s: pd.Series) -> pd.Series:
    """'a|b| c' -> ['a', 'b', 'c']: split on '|', then the values' own rule (`clean_values`). A Parquet
    list<string> column is taken as the list it is; a missing value is an empty list."""
    if s.dtype == object and s.map(_is_list).any():
        return s.map(_list_values)
    text = s.fillna("").astype(str)
    return text.map(lambda v: clean_values(v.split(LIST_SEP)))


# Share of a column's non-empty text cells holding another list separator, with none holding '|',
# above which the column was most likely written with that separator.
OTHER_SEPARATOR_SHARE = 0.1


def _note_other_separator(s: pd.Series, path: Path, column: str, report: LoadReport) -> None:
    """Warn when a list column looks written with ',' or ';' (each such cell would be one long value)."""
    if s.dtype == object:  # cells of any type: Parquet's lists are no text
        text = s[s.map(lambda v: isinstance(v, str) and v != "")]
    else:
        text = s[s.fillna("").astype(str) != ""]
    if text.empty or text.str.contains(LIST_SEP, regex=False).any():
        return
    for sep in (",", ";"):
        n = int(text.str.contains(sep, regex=False).sum())
        if n > OTHER_SEPARATOR_SHARE * len(text):
            report.warn(
                f"{path}: no {column} cell holds '{LIST_SEP}' but {n} of {len(text)} hold {sep!r}: values are "
                f"split on '{LIST_SEP}' only, so each such cell is read as one value"
            )
            return


def _is_list(v: object) -> bool:
    return isinstance(v, list | tuple | np.ndarray)


def _list_values(v: object) -> list[str]:
    if isinstance(v, list | tuple | np.ndarray):
        return clean_values(str(x) for x in v if x is not None)
    return (
        []
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
        else clean_values(str(v).split(LIST_SEP))
    )


def _text(s: pd.Series) -> pd.Series:
    """A column as stripped text, whatever Parquet typed it as: a missing value is '' (an id is then
    dropped as empty), and an integral float is its integer ('12', not '12.0': pandas reads
    Parquet's integer column with nulls as float)."""
    if pd.api.types.is_float_dtype(s):
        integral = np.isfinite(s) & (s == np.floor(s))
        text = s.astype(str).where(~integral, s.where(integral, 0).astype(np.int64).astype(str))
        return text.where(s.notna(), "")
    return s.astype(object).where(s.notna(), "").astype(str).str.strip()


def _load_items(path: Path, report: LoadReport) -> pd.DataFrame:
    df = read_table(path, report)
    _require_columns(df, path, ITEM_COLUMNS)
    df["item_id"] = _text(df["item_id"])
    df = _drop_bad(df, df["item_id"].eq(""), path, "an empty item_id", report)
    df = _drop_bad(df, df["item_id"].duplicated(), path, "a duplicate item_id (the first row is kept)", report)
    list_cols = [c for c in df.columns if c not in ("item_id", "_line")]
    for c in list_cols:
        _note_other_separator(df[c], path, c, report)
        df[c] = split_list(df[c])
    untagged = int((df["tags"].map(len) == 0).sum())
    if untagged:
        report.warn(f"{path}: {untagged} of {len(df)} item(s) have no tags; they give no tag labels")
    report.rows["items"] = len(df)
    return df[["item_id", *list_cols]].reset_index(drop=True)


def _load_events(path: Path, item_ids: pd.Index, report: LoadReport) -> pd.DataFrame:
    df = read_table(path, report)
    _require_columns(df, path, EVENT_COLUMNS)
    for c in ("user_id", "item_id"):
        df[c] = _text(df[c])
        df = _drop_bad(df, df[c].eq(""), path, f"an empty {c}", report)
    ts, bad_ts = _to_time(df["timestamp"])
    df = _drop_bad(df.assign(timestamp=ts), bad_ts, path, "a timestamp that is not an integer", report)
    label, bad_label = _to_int(df["label"])
    bad_label |= ~label.isin((0, 1))
    df = _drop_bad(df.assign(label=label), bad_label, path, "a label that is not 0 or 1", report)
    unknown = ~df["item_id"].isin(item_ids)
    n_unknown = int(unknown.sum())
    if n_unknown == len(df) and len(df) > 0:
        first = int(df["_line"].iloc[0])
        raise DataError(path, "no event's item_id is in the items file; are they the same data set?", first)
    if n_unknown:
        first = int(df.loc[unknown, "_line"].iloc[0])
        report.warn(f"{path}: dropped {n_unknown} event(s) whose item is not in the items file (first at line {first})")
        df = df.loc[~unknown]
    if len(df) == 0:
        raise DataError(path, "no usable events")
    repeated = df.duplicated(list(EVENT_COLUMNS))
    if repeated.any():  # kept: a repeat may be real, but logging duplicates would inflate every count
        first = int(df.loc[repeated, "_line"].iloc[0])
        report.warn(
            f"{path}: {int(repeated.sum())} event(s) repeat an earlier one exactly (user, item, timestamp, label; "
            f"first at line {first}); kept, each counting as an event: deduplicate upstream if they are logging "
            "duplicates"
        )
    report.rows["events"] = len(df)
    out = df[list(EVENT_COLUMNS)].reset_index(drop=True)
    return out.astype({"timestamp": np.int64, "label": np.int8})


def _load_users(path: Path, report: LoadReport) -> pd.DataFrame:
    df = read_table(path, report)
    _require_columns(df, path, ("user_id",))
    df["user_id"] = _text(df["user_id"])
    df = _drop_bad(df, df["user_id"].eq(""), path, "an empty user_id", report)
    df = _drop_bad(df, df["user_id"].duplicated(), path, "a duplicate user_id (the first row is kept)", report)
    cols = [c for c in df.columns if c not in ("user_id", "_line")]
    if not cols:
        raise DataError(path, "a users file needs at least one column besides user_id", 1)
    for c in cols:
        df[c] = _text(df[c])
    report.rows["users"] = len(df)
    return df[["user_id", *cols]].reset_index(drop=True)


def load_dataset(directory: str | Path) -> Dataset:
    """Load and validate the data set in `directory`; warnings go to the log and to `Dataset.report`."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(d, "not a directory")
    report = LoadReport()
    items_path = find_table(d, "items")
    events_path = find_table(d, "events")
    users_path = find_table(d, "users", required=False)
    assert items_path is not None and events_path is not None
    items = _load_items(items_path, report)
    events = _load_events(events_path, pd.Index(items["item_id"]), report)
    users = _load_users(users_path, report) if users_path is not None else None
    if users is not None:
        clash = [c for c in users.columns if c != "user_id" and c in items.columns]
        if clash:
            raise DataError(users_path or d, f"user column(s) {clash} clash with item columns; rename them", 1)
        # a user column is a field of its own name: one named like a history field would replace it
        history_fields = {f"clicked_{c}" for c in items.columns if c != "item_id"} | {"unclicked_tags"}
        taken = [c for c in users.columns if c in history_fields]
        if taken:
            raise DataError(
                users_path or d,
                f"user column(s) {taken} have the name of a field built from the events (clicked_<item column>, "
                "unclicked_tags) and would replace it; rename them",
                1,
            )
    for w in report.warnings:
        log.info(w)
    return Dataset(items=items, events=events, users=users, report=report, source=str(d))
