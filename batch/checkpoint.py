"""The checkpoint next to the job's outputs: which chunks are written, so `--resume` skips them.

`checkpoint.jsonl` starts with the job's identity (input fingerprint, bundle version, k, times,
chunk size, Redis target); then one line per chunk, appended and fsynced only after the chunk's
records are in Redis and its rejects are in the rejects file. A job killed part-way has therefore
written, beyond its checkpoint, at most the chunks that were in flight: a resumed run writes those
users once more (identical records) and every other user not at all. A torn last line (killed
mid-write, so without its newline) is ignored; any other line that is not the checkpoint's own stops
`--resume` with its line number.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.job import BatchError

CHECKPOINT_FILE = "checkpoint.jsonl"


@dataclass
class Progress:
    """What a previous run finished: chunk index -> its line, and the rejects file's length then."""

    identity: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    rejects_bytes: int = 0

    @property
    def rows_done(self) -> int:
        return sum(int(c["rows"]) for c in self.done.values())


def _read(path: Path) -> Progress | None:
    if not path.is_file():
        return None
    *lines, _torn = path.read_bytes().split(b"\n")  # b"" unless a killed run tore the last line
    if not lines:
        return None  # killed while writing its first line: nothing was written under it
    head = _parse(path, 1, lines[0], "a checkpoint's job line")
    if not isinstance(head, dict) or not isinstance(head.get("job"), dict):
        raise BatchError(f"{path}, line 1: not a checkpoint's job line; run without --resume to start over")
    progress = Progress(identity=head["job"])
    for n, line in enumerate(lines[1:], 2):
        entry = _parse(path, n, line, "a chunk record (chunk, rows, rejects_bytes)")
        try:
            chunk, _rows, rejects_bytes = int(entry["chunk"]), int(entry["rows"]), int(entry["rejects_bytes"])
        except (KeyError, TypeError, ValueError):
            raise BatchError(
                f"{path}, line {n}: not a chunk record (chunk, rows, rejects_bytes); run without --resume to start over"
            ) from None
        progress.done[chunk] = entry
        progress.rejects_bytes = max(progress.rejects_bytes, rejects_bytes)
    return progress


def _parse(path: Path, n: int, line: bytes, what: str) -> Any:
    """One whole line's JSON; a line that is none (binary, another file's text) is named, not skipped."""
    try:
        return json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are no text
        raise BatchError(f"{path}, line {n}: not {what}; run without --resume to start over") from None


class Checkpoint:
    def __init__(self, out: Path) -> None:
        self.path = out / CHECKPOINT_FILE
        self._file: Any = None

    def previous(self) -> Progress | None:
        return _read(self.path)

    def open(self, identity: dict[str, Any], resume: bool) -> Progress:
        """Start (a fresh checkpoint) or resume (the previous one, which must be of the same job)."""
        before = self.previous() if resume else None
        if before is not None:
            differ = sorted(
                k for k in set(identity) | set(before.identity) if identity.get(k) != before.identity.get(k)
            )
            if differ:
                details = "; ".join(f"{k}: was {before.identity.get(k)!r}, now {identity.get(k)!r}" for k in differ)
                raise BatchError(
                    f"--resume: {self.path} belongs to another job ({details}); run without --resume to start over"
                )
            self._drop_torn_tail()
            self._file = self.path.open("ab")
            return before
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._append({"job": identity})
        return Progress(identity=identity)

    def _drop_torn_tail(self) -> None:
        """A killed run's torn last line: cut, or the next record would be appended onto it."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def record(self, chunk: int, rows: int, written: int, rejected: int, rejects_bytes: int) -> None:
        line = {"chunk": chunk, "rows": rows, "written": written, "rejected": rejected, "rejects_bytes": rejects_bytes}
        self._append(line)

    def _append(self, obj: dict[str, Any]) -> None:
        self._file.write(json.dumps(obj, sort_keys=True).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
