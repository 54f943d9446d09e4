"""The CPU probe (`loadtest.speed`): its sampler process, its figures, and where the reports carry them."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest.report import render
from loadtest.serve import summarize
from loadtest.speed import ProbeByMinute, SpeedSampler, probe_ms, summary
from utpm_cli.main import app


def test_the_probe_times_its_work_in_cpu_time() -> None:
    assert 0 <= probe_ms(0) < probe_ms(2_000_000)


def test_summary_gives_median_and_deciles() -> None:
    s = summary([float(x) for x in range(1, 12)])  # 1 .. 11
    assert s == {"median_ms": 6.0, "p10_ms": 2.0, "p90_ms": 10.0, "samples": 11}
    assert summary([]) == {"median_ms": None, "p10_ms": None, "p90_ms": None, "samples": 0}
    assert summary([3.0])["median_ms"] == summary([3.0])["p90_ms"] == 3.0


def test_the_sampler_probes_in_a_child_until_stopped() -> None:
    with SpeedSampler(interval_s=0.02) as s:
        proc = s._proc
        time.sleep(2.0)  # the child's start takes a while on a busy machine
    assert proc is not None and proc.poll() is not None  # the child is gone
    assert len(s.samples) >= 3 and all(ms > 0 for ms in s.samples) and set(s.cpus) == {-1}
    got = s.stop()  # stopping again changes nothing
    assert got["samples"] == len(s.samples) and got["p10_ms"] <= got["median_ms"] <= got["p90_ms"]


def test_probes_by_minute_give_one_summary_a_minute_of_ticks() -> None:
    """A sampler per minute of the run's clock (ticks in minutes 0, 1 and 2): each minute's summary
    holds its own probes, and no sampler outlives `finish`."""
    probes = ProbeByMinute()
    for t in (1.0, 2.0, 59.9, 60.2, 61.0, 120.7, 121.0):
        probes.tick(t)
        time.sleep(0.3)  # the child probes every 0.1 s: a few samples per minute
    samplers = len(probes.minutes) + 1
    got = probes.finish()
    assert samplers == len(got) == 3 and probes._sampler is None
    assert all(m["samples"] >= 1 and m["median_ms"] > 0 for m in got)
    assert probes.finish() == got  # finishing again changes nothing


def test_bench_speed_probes_each_cpu_in_turn_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(app, ["bench", "speed", "--seconds", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    cpus = sorted(os.sched_getaffinity(0))
    assert sorted(int(c) for c in report["per_cpu"]) == cpus[: report["all"]["samples"]]
    assert report["all"]["samples"] == len(report["samples"]) >= 2
    probes = [ms for _, ms in report["samples"]]
    assert report["median_over_fastest"] == round(statistics.median(probes) / min(probes), 3)
    assert "| all | " in render(report) and f"wrote {out}" in result.output
    bad = CliRunner().invoke(app, ["bench", "speed", "--seconds", "0"])
    assert bad.exit_code != 0 and "--seconds must be positive" in bad.output


def _probe(median: float) -> dict[str, float | int]:
    return {"median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.1, "samples": 10}


@pytest.mark.parametrize(("post", "roof", "words"), [(3.0, 2.0, "50% slower"), (1.5, 2.0, "25% faster")])
def test_a_serve_report_says_how_fast_the_cores_ran_for_the_post_run_and_the_roofline(
    post: float, roof: float, words: str
) -> None:
    runs = {"utpm/post/16": {"rps": 500.0, "p99_ms": 40.0, "cpu_probe": _probe(post)}}
    roofline = {
        "best": {"batch": 8, "users_per_s": 1000.0, "cpu_ms_per_user": 1.0, "cpu_probe": _probe(roof)},
        "rows": [{"batch": 8, "threads": 2, "users_per_s": 1000.0, "cpu_ms_per_user": 1.0, "cpu_probe": _probe(roof)}],
        "thread_settings": {"batch_workers": 2},
        "seconds_per_row": 3.0,
    }
    s = summarize(runs, 16, roofline)
    assert s["ratios"]["cpu_probe_post_over_roofline"] == round(post / roof, 3)
    report = {
        "kind": "serve",
        "command": "utpm bench serve",
        "started_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "x", "cores": 2},
        "bundle": {"version": "v", "model": "m", "preset": "p", "servable_tags": 10, "dim": 4,
                   "index": {"factory": "Flat", "params": None}},
        "payloads": "p", "config": {"k": 5, "duration_s": 1.0, "workers": 1, "service_settings": {}},
        "runs": runs, "summary": s, "roofline": roofline,
    }  # fmt: skip
    text = render(report)
    assert f"| utpm/post/16 | - | 500.0 | - | - | 40.0 | - | - | - | - | {post:.2f} (" in text
    assert f"| 8 | - | 1,000.0 | 1.000 | {roof:.2f} (" in text
    assert words in text
    del runs["utpm/post/16"]["cpu_probe"]  # a report from before the probe: no note, "-" in the column
    old = render({**report, "summary": summarize(runs, 16, roofline)})
    assert "CPU probe took" not in old and "| 40.0 | - | - | - | - | - |" in old
