"""The rejects file: one JSON line per row that was not profiled, with its row number and the reason.

A row is rejected, never the job: bad JSON, no user id, a value that is not a string, an unknown
field name, a list longer than the service accepts, a later duplicate of the user in its chunk.
On `--resume` the file is cut back to its length at the last checkpointed chunk, so rows of
chunks that are redone are not listed twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REJECTS_FILE = "rejects.jsonl"


class RejectsFile:
    def __init__(self, out: Path) -> None:
        self.path = out / REJECTS_FILE

    def open(self, keep_bytes: int) -> None:
        """Keep the first `keep_bytes` bytes (what the checkpoint covers) and append after them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.truncate(keep_bytes)
        self._file = self.path.open("ab")

    def append(self, rejects: Iterable[dict[str, Any]]) -> int:
        """Write the rejects durably; the file's length after them (what the checkpoint records)."""
        for r in rejects:
            self._file.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        return int(self._file.tell())

    def close(self) -> None:
        self._file.close()
