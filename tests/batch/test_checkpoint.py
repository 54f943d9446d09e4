"""The checkpoint file on its own: a torn tail, a resumed run's appends, lines that are not its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.checkpoint import CHECKPOINT_FILE, Checkpoint
from batch.job import BatchError

JOB = {"k": 20, "model_version": "v1"}


def _chunk(i: int) -> str:
    return json.dumps({"chunk": i, "rejected": 0, "rejects_bytes": 0, "rows": 10, "written": 10})


def test_a_resumed_run_cuts_the_torn_line_before_appending(tmp_path: Path) -> None:
    """Before, the resumed run appended onto the torn bytes: its first record became part of an
    unreadable line, and a second --resume redid that chunk."""
    path = tmp_path / CHECKPOINT_FILE
    path.write_text(json.dumps({"job": JOB}) + "\n" + _chunk(0) + "\n" + _chunk(1)[:15])  # killed mid-write
    checkpoint = Checkpoint(tmp_path)
    assert set(checkpoint.open(JOB, resume=True).done) == {0}
    checkpoint.record(1, 10, 10, 0, 0)
    checkpoint.close()
    again = Checkpoint(tmp_path).previous()
    assert again is not None and set(again.done) == {0, 1}


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        ([json.dumps({"job": JOB}), '{"index": "x"}'], "line 2: not a chunk record"),
        ([json.dumps({"job": JOB}), '{"chunk": "one", "rows": 10, "rejects_bytes": 0}'], "line 2: not a chunk record"),
        (["[1, 2]"], "line 1: not a checkpoint's job line"),
        # before: a UnicodeDecodeError traceback (bytes that are no text) ...
        ([json.dumps({"job": JOB}), "\udcff\udcfe"], "line 2: not a chunk record"),
        # ... and a middle line that is no JSON was skipped as if torn, though a record follows it
        ([json.dumps({"job": JOB}), "chunk 0 done", _chunk(1)], "line 2: not a chunk record"),
        (["# my notes", _chunk(0)], "line 1: not a checkpoint's job line"),
    ],
)
def test_a_line_that_is_not_the_checkpoints_own_is_named(tmp_path: Path, lines: list[str], where: str) -> None:
    # before: KeyError, ValueError or AttributeError tracebacks from --resume
    (tmp_path / CHECKPOINT_FILE).write_bytes(("\n".join(lines) + "\n").encode(errors="surrogateescape"))
    with pytest.raises(BatchError, match=where):
        Checkpoint(tmp_path).open(JOB, resume=True)
