"""Where the rows come from: `{user_id, features}` rows in JSONL or Parquet, or a generic data set.

A source is split into chunks that a worker can read on its own (a byte range of a JSONL file, a
slice of a Parquet row group), so the driver only plans and the workers read: the plan is the same
on every run over the same file, which is what makes chunk numbers a checkpoint. A data set in the
generic format is first turned into a JSONL file of features by the training protocol
(`utpm.data.protocol`, the code that built the model's training inputs), then read as one.

Rows that cannot be read (bad JSON, no user id, features not an object) come back as rows with an
`error`; they end in the rejects file, they never stop the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import orjson

Format = Literal["auto", "jsonl", "parquet", "dataset"]
# Bytes read at a time while finding chunk boundaries in a JSONL file.
SCAN_BLOCK_BYTES = 1 << 22


class SourceError(ValueError):
    """The input as a whole cannot be read (missing, wrong format, no user_id column): the message says why."""


@dataclass(frozen=True)
class Chunk:
    index: int
    first_row: int  # 1-based line (JSONL) or row (Parquet) number of the chunk's first row
    rows: int
    start: int  # JSONL: byte offset; Parquet: row group
    stop: int  # JSONL: byte offset past the chunk; Parquet: offset of the slice within the row group


@dataclass
class Row:
    number: int  # 1-based line or row number in the input, for the rejects file
    user_id: str | None
    features: Any
    error: str | None = None


class Source(Protocol):
    @property
    def path(self) -> Path: ...

    def plan(self, chunk_users: int) -> list[Chunk]: ...

    def read(self, chunk: Chunk) -> list[Row]: ...

    def fingerprint(self) -> dict[str, Any]: ...


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _row(number: int, obj: object) -> Row:
    if not isinstance(obj, dict):
        return Row(number, None, None, f"expected a JSON object, got {type(obj).__name__}")
    user_id = obj.get("user_id")
    features = obj.get("features")
    if isinstance(features, str):  # a Parquet column may carry the features as JSON text
        try:
            features = orjson.loads(features)
        except orjson.JSONDecodeError as e:
            return Row(number, str(user_id) if user_id else None, None, f"features is not valid JSON: {e}")
    if not isinstance(user_id, str) or not user_id:
        return Row(number, None, features, "no user_id (a non-empty string is required)")
    if features is None:
        features = {}
    if not isinstance(features, dict):
        return Row(
            number, user_id, None, f"features must be an object of field -> values, got {type(features).__name__}"
        )
    return Row(number, user_id, features)


@dataclass(frozen=True)
class JsonlSource:
    """One JSON object per line: {"user_id": "...", "features": {"field": ["value", ...], ...}}."""

    path: Path

    def fingerprint(self) -> dict[str, Any]:
        return {"format": "jsonl", **_fingerprint(self.path)}

    def plan(self, chunk_users: int) -> list[Chunk]:
        """Chunks of `chunk_users` lines, by byte offset (one pass over the file, in C via numpy)."""
        size = self.path.stat().st_size
        starts = [0]  # byte offset of every chunk's first line
        lines = 0
        base = 0
        with self.path.open("rb") as f:
            while block := f.read(SCAN_BLOCK_BYTES):
                newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
                # the newline ending line number `lines + j + 1` ends a chunk when that number is a multiple
                ends = newlines[(lines + np.arange(1, len(newlines) + 1)) % chunk_users == 0]
                starts.extend(int(base + e + 1) for e in ends)
                lines += len(newlines)
                base += len(block)
        if size > 0 and not self._ends_with_newline(size):
            lines += 1  # a last line without a newline
        if starts[-1] >= size and len(starts) > 1:
            starts.pop()
        chunks = []
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else size
            rows = min(chunk_users, lines - i * chunk_users)
            if stop > start and rows > 0:
                chunks.append(Chunk(i, i * chunk_users + 1, rows, start, stop))
        return chunks

    def _ends_with_newline(self, size: int) -> bool:
        with self.path.open("rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"

    def read(self, chunk: Chunk) -> list[Row]:
        with self.path.open("rb") as f:
            f.seek(chunk.start)
            data = f.read(chunk.stop - chunk.start)
        rows = []
        for i, line in enumerate(data.split(b"\n")[: chunk.rows]):
            number = chunk.first_row + i
            if not line.strip():
                continue  # blank lines are not rows
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                rows.append(Row(number, None, None, f"invalid JSON: {e}"))
                continue
            rows.append(_row(number, obj))
        return rows


_ROW_GROUP_CACHE: dict[tuple[str, int], Any] = {}


def _field_value(value: Any) -> Any:
    """A Parquet field column's value; a map arrives as (key, value) pairs, which are {value: count}."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return dict(value)
    return value


@dataclass(frozen=True)
class ParquetSource:
    """A `user_id` column and either a `features` column (JSON text, struct or map) or one column per
    field (a list of values, or a map {value: count})."""

    path: Path

    def fingerprint(self) -> dict[str, Any]:
        return {"format": "parquet", **_fingerprint(self.path)}

    def _file(self) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise SourceError(f"{self.path}: not a readable Parquet file ({e})") from None

    def plan(self, chunk_users: int) -> list[Chunk]:
        pf = self._file()
        names = pf.schema_arrow.names
        if "user_id" not in names:
            raise SourceError(f"{self.path}: no user_id column (columns: {names})")
        chunks: list[Chunk] = []
        row = 1
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            for offset in range(0, n, chunk_users):
                rows = min(chunk_users, n - offset)
                chunks.append(Chunk(len(chunks), row, rows, rg, offset))
                row += rows
        return chunks

    def read(self, chunk: Chunk) -> list[Row]:
        key = (str(self.path), chunk.start)
        table = _ROW_GROUP_CACHE.get(key)
        if table is None:  # consecutive chunks of one row group read it once per worker
            table = self._file().read_row_group(chunk.start)
            _ROW_GROUP_CACHE.clear()
            _ROW_GROUP_CACHE[key] = table
        part = table.slice(chunk.stop, chunk.rows).to_pylist()
        field_columns = [c for c in table.column_names if c not in ("user_id", "features")]
        rows = []
        for i, rec in enumerate(part):
            number = chunk.first_row + i
            if "features" in rec:
                features = rec["features"]
                if isinstance(features, list):  # a Parquet map arrives as (key, value) pairs
                    features = dict(features)
            else:
                features = {c: _field_value(rec[c]) for c in field_columns if rec[c] not in (None, [], "")}
            user_id = rec.get("user_id")
            if isinstance(user_id, int) and not isinstance(user_id, bool):  # an integer id column: its decimal text
                user_id = str(user_id)
            rows.append(_row(number, {"user_id": user_id, "features": features}))
        return rows


def stage_dataset(data_dir: Path, out: Path, say: Callable[[str], None] | None = None) -> Path:
    """A generic data set -> `out/features.jsonl`: each user's features built by the training code's
    field construction (utpm.data.protocol.current_features) from all of the user's events, as
    `CurrentFeatures.request` sends them (the current `REQUEST_SHAPE`), every user with an event
    included. Reused when `features.json` beside it records the same data set.
    """
    from utpm.data.errors import DataError
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import REQUEST_SHAPE, current_features

    staged = out / "features.jsonl"
    meta_path = out / "features.json"
    files = sorted(p for p in data_dir.iterdir() if p.is_file()) if data_dir.is_dir() else []
    identity = {"data": str(data_dir.resolve()), "files": [_fingerprint(p) for p in files]}
    if staged.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        # not a staging of the 80% cut, nor one of requests of another shape (before counts, items...)
        if (
            meta.get("identity") == identity
            and meta.get("events") == "all"
            and meta.get("request_shape") == REQUEST_SHAPE
        ):
            if say:
                say(f"reusing the staged features of {data_dir} in {staged}")
            return staged
    if say:
        say(f"building features of every user of {data_dir} from all of their events")
    try:
        users = current_features(load_dataset(data_dir))
    except DataError as e:
        raise SourceError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    tmp = staged.with_suffix(".jsonl.tmp")
    with tmp.open("wb") as f:
        for i in range(users.n_users):
            f.write(orjson.dumps({"user_id": str(users.user_ids[i]), "features": users.request(i)}) + b"\n")
    os.replace(tmp, staged)
    meta = {"identity": identity, "users": users.n_users, "events": "all", "request_shape": REQUEST_SHAPE}
    meta_path.write_text(json.dumps(meta, indent=2))
    if say:
        say(f"staged {users.n_users:,} users")
    return staged


def open_source(path: Path, fmt: Format, stage_dir: Path, say: Callable[[str], None] | None = None) -> Source:
    """The source for `path`; `auto`: a directory is a generic data set, *.parquet Parquet, else JSONL."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if fmt == "auto":
        if path.is_dir():
            fmt = "dataset"
        elif path.suffix.lower() in (".parquet", ".pq"):
            fmt = "parquet"
        else:
            fmt = "jsonl"
    if fmt == "dataset":
        if not path.is_dir():
            raise SourceError(f"{path}: a data set in the generic format is a directory (docs/data-format.md)")
        return JsonlSource(stage_dataset(path, stage_dir, say))
    if path.is_dir():
        raise SourceError(f"{path} is a directory; --format {fmt} reads a file")
    if fmt == "parquet":
        return ParquetSource(path)
    return JsonlSource(path)
