"""The load generators, each a subprocess read back into one dict of figures: locust's closed-loop
users, locust's `OpenLoopUser` (fixed rate, coordinated omission corrected), and wrk (a second,
C-speed closed loop). Percentiles come from `measure` whatever the generator."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.measure import CpuWindow, histogram_percentiles, percentiles
from loadtest.payloads import PayloadSource
from loadtest.procs import Server

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
READS = {"CachedReadUser": ["GET /profile/[user]"], "MixedUser": ["POST /profile", "GET /profile/[user]"]}
START_TIMEOUT_S = 60.0  # locust's start-up (gevent, imports) on a loaded machine, at most


def locust_args(source_args: Sequence[str], k: int, read_users: int = 10) -> list[str]:
    """The locustfile's options: where bodies come from, k, and the users CachedReadUser reads."""
    return [*source_args, "--k", str(k), "--read-users", str(read_users), "--payload-seed", "0"]


def _locust(
    server: Server, user_class: str, users: int, seconds: float, prefix: Path, extra: Sequence[str]
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        server.base_url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{math.ceil(seconds)}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(prefix),
        "--json-file",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
        *extra,
        user_class,
    ]


def _figures(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """requests/s, percentiles and failures of locust stats entries taken together."""
    n = sum(int(e["num_requests"]) for e in entries)
    failures = sum(int(e["num_failures"]) for e in entries)
    if n == 0:
        return {"requests": 0, "failures": failures, "rps": 0.0}
    hist: dict[float, int] = {}
    for e in entries:
        for ms, count in e["response_times"].items():
            hist[float(ms)] = hist.get(float(ms), 0) + int(count)
    start = min(float(e["start_time"]) for e in entries)
    end = max(float(e["last_request_timestamp"] or start) for e in entries)
    return {
        "requests": n,
        "failures": failures,
        "rps": round(n / max(end - start, 1e-3), 1),
        **histogram_percentiles(hist),
        "avg_ms": round(sum(float(e["total_response_time"]) for e in entries) / n, 2),
        "max_ms": round(max(float(e["max_response_time"]) for e in entries), 1),
    }


def run_locust(
    server: Server, user_class: str, users: int, seconds: float, prefix: Path, extra: Sequence[str]
) -> dict[str, Any]:
    """locust headless: `users` simulated users of `user_class` for `seconds` against `server`."""
    window = CpuWindow(server.cpu_seconds)
    with Path(f"{prefix}.log").open("wb") as log:
        cmd = _locust(server, user_class, users, seconds, prefix, extra)
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    cpu = window.close()
    stats_file = Path(f"{prefix}.json")
    if rc != 0 or not stats_file.is_file():
        raise RuntimeError(f"locust exited with status {rc}; see {prefix}.log")
    entries = json.loads(stats_file.read_text())
    names = READS.get(user_class, ["POST /profile"])
    out = {
        "tool": "locust",
        "users": users,
        "duration_s": seconds,
        **_figures([e for e in entries if e["name"] in names]),
    }
    if user_class == "MixedUser":  # the row is both together; each on its own besides
        out["mix"] = {n.split()[0].lower(): _figures([e for e in entries if e["name"] == n]) for n in names}
    fail_file = Path(f"{prefix}_failures.csv")
    if fail_file.is_file():  # written every second, so possibly a second behind: examples only
        rows = list(csv.DictReader(fail_file.open()))[:5]
        out["failure_examples"] = [{"error": r["Error"][:300], "count": int(r["Occurrences"])} for r in rows]
    return {**out, **cpu}


def run_open_loop(
    server: Server,
    rate: float,
    seconds: float,
    prefix: Path,
    extra: Sequence[str],
    get_share: float = 0.0,
    on_tick: Callable[[float], None] | None = None,
    users: int | None = None,
) -> list[dict[str, Any]]:
    """`rate` requests/s for `seconds` from locust's OpenLoopUser; every request's outcome
    ({t, kind, status, latency_ms, late_ms, problem}, t in seconds from the first due send).
    `on_tick(t)` runs here about once a second meanwhile (fault injection, sampling)."""
    # Each user sends at most 2/s: its requests go late only behind an answer slower than 0.5 s, and
    # under overload there are more users than the service admits at once, so its shedding, not
    # the generator, limits the load.
    users = users or min(2000, max(4, math.ceil(rate / 2)))
    out = Path(f"{prefix}.jsonl")
    opts = [*f"--rate {rate:g} --run-seconds {seconds:g} --get-share {get_share:g}".split(), "--outcomes", str(out)]
    cmd = _locust(server, "OpenLoopUser", users, START_TIMEOUT_S + seconds + 15, prefix, [*extra, *opts])
    start_file, start_at, tick = Path(f"{out}.start"), None, 1.0
    with Path(f"{prefix}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(0.05)
            if start_at is None and start_file.is_file() and start_file.read_text():
                start_at = float(start_file.read_text())
            if start_at is not None and time.time() - start_at >= tick and tick < seconds:
                if on_tick is not None:
                    on_tick(time.time() - start_at)
                tick += 1.0
    if proc.returncode != 0 or not out.is_file() or start_at is None:
        raise RuntimeError(f"locust (OpenLoopUser) exited with status {proc.returncode}; see {prefix}.log")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for r in rows:
        r["t"] = r["t"] - start_at
    return sorted(rows, key=lambda r: r["t"])


def outcome_summary(rows: Sequence[dict[str, Any]], seconds: float | None = None) -> dict[str, Any]:
    """Requests by status, wrong answers, and the latency percentiles of the right answers."""
    by_status: dict[str, int] = {}
    for r in rows:
        key = "transport_error" if r["status"] == 0 else str(r["status"])
        by_status[key] = by_status.get(key, 0) + 1
    ok = [r["latency_ms"] for r in rows if r["status"] == 200 and r["problem"] is None]
    out = {
        "requests": len(rows),
        "by_status": dict(sorted(by_status.items())),
        "wrong_answers": sum(1 for r in rows if r["status"] == 200 and r["problem"] is not None),
        "stale_answers": sum(1 for r in rows if r.get("stale")),
        "late_starts": sum(1 for r in rows if r["late_ms"] > 50),  # sent >50 ms after due: counted from due
        **percentiles(ok),
    }
    if seconds:
        out["rps"] = round(len(ok) / seconds, 1)
    return out


def write_bodies(source: PayloadSource, path: Path, k: int, n: int = 1000) -> Path:
    """`n` complete POST bodies, one per line, for wrk."""
    rng = random.Random(0)
    path.write_text("".join(json.dumps(source.body(rng, f"wrk-{i}", k)) + "\n" for i in range(n)))
    return path


def write_read_paths(path: Path, users: Sequence[str], k: int) -> Path:
    """GET paths of cached profiles, one per line, for wrk (wrk_get.lua)."""
    from urllib.parse import quote

    path.write_text("".join(f"/profile/{quote(u, safe='')}?k={k}\n" for u in users))
    return path


def run_wrk(
    server: Server, connections: int, seconds: float, bodies: Path, log_path: Path, method: str = "POST"
) -> dict[str, Any]:
    """wrk, one thread, `connections` closed-loop connections: POST /profile with the bodies of a
    JSON-lines file (wrk_post.lua), or GET the paths of a file (`method="GET"`, wrk_get.lua)."""
    exe = shutil.which("wrk")
    if exe is None:
        return {"tool": "wrk", "skipped": "wrk is not installed (Debian: apt-get install wrk)"}
    script, url = (HERE / "wrk_post.lua", server.base_url + "/profile")
    if method == "GET":
        script, url = HERE / "wrk_get.lua", server.base_url
    cmd = [
        exe,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        "--",
        str(bodies),
    ]
    window = CpuWindow(server.cpu_seconds)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = window.close()
    log_path.write_text(proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (status {proc.returncode}); see {log_path}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    hist = {us / 1000: count for us, count in raw["latency_us"]}
    return {
        "tool": "wrk",
        "method": method,
        "connections": connections,
        "duration_s": seconds,
        "requests": raw["requests"],
        "rps": round(raw["requests"] / max(raw["seconds"], 1e-3), 1),
        **histogram_percentiles(hist),
        "failures": int(sum(raw["errors"].values())),
        "errors": raw["errors"],
        **cpu,
    }
