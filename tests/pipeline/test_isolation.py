"""A stage that `pipeline.build_bundle(isolate=True)` runs in a spawned process ends with the build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def slow_stage(out: Path, seconds: float) -> dict[str, Any]:
    """A stand-in for a stage: says where it runs, works for a while, then writes its output."""
    (out / "started").write_text(str(os.getpid()))
    time.sleep(seconds)
    (out / "output").write_text("written")
    return {}


def allocating_stage(mib: int) -> dict[str, Any]:
    """A stage whose memory peaks at about `mib` MiB above what the process started with."""
    import numpy as np

    block = np.ones(mib * 2**20, np.uint8)  # written, so resident
    return {"sum": int(block[:: 2**20].sum())}


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever adopted it to reap it counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_killed_build_leaves_no_stage_running_or_writing(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from pipeline.build import _run_isolated; "
        "from tests.pipeline.test_isolation import slow_stage; "
        "_run_isolated(slow_stage, (Path(sys.argv[1]), 4.0))"
    )
    build = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO)
    try:
        _wait_for(tmp_path / "started", timeout=60)
        stage = int((tmp_path / "started").read_text())
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=10)
        deadline = time.monotonic() + 3
        while _alive(stage) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(stage), "the stage outlived the build that started it"
        time.sleep(4.5)  # past the stage's own end: it must not have written anything
        assert not (tmp_path / "output").exists()
    finally:
        build.kill()


def test_an_isolated_stage_returns_its_report(tmp_path: Path) -> None:
    from pipeline.build import _run_isolated

    report = _run_isolated(slow_stage, (tmp_path, 0.0))
    assert set(report) == {"peak_rss_gib"}
    assert (tmp_path / "output").read_text() == "written"


def test_an_isolated_stage_reports_its_own_peak_memory() -> None:
    """Each stage runs in a fresh process, so its peak is its own: 400 MiB more than a stage that
    allocates nothing, whatever the test process itself holds."""
    from pipeline.build import _run_isolated

    small = _run_isolated(allocating_stage, (0,))
    big = _run_isolated(allocating_stage, (400,))
    assert big["sum"] == 400
    assert 0.35 <= big["peak_rss_gib"] - small["peak_rss_gib"] <= 0.5, (small, big)
