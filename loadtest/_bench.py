"""`utpm bench serve`: the service under load, side by side with a ceiling and a naive peer.

One run, in this order, one server at a time (on 2 cores anything else running would compete):

1. the bundle: `_bundle.prepare_bench_bundle` (built once under artifacts/bench/, then reused);
2. a private redis-server; the service as `uvicorn --factory service.main:create_app` (settings
   through UTPM_* variables), warmed up, then locust headless for `duration_s` at each of
   `levels` simulated users on `POST /profile` (ComputeUser), and at `compare_users` on cached
   reads (CachedReadUser) and a 1:4 mix (MixedUser); every run scrapes /metrics before and after,
   so each row carries its own per-stage times and batch sizes;
3. wrk at a fixed rate (`wrk_fixed_rate.lua`) on `POST /profile`, to cross-check tail latency
   with a second, open-ish-loop load generator; then the cached reads again on a second service
   with its near cache off (`UTPM_NEAR_CACHE_TTL_MS=0`: every hit is a Redis round trip);
4. the service again under cProfile (event-loop thread) for a shorter compute run: where the
   Python time goes;
5. the ceiling (`_ceiling.py`) on POST and GET, and the naive peer (`_naive_peer.py`) on POST, at
   `compare_users`;
6. ratios, targets, JSON, and a dated section of docs/performance.md.

CPU is accounted per run: the load generator's (getrusage of the waited-for locust/wrk process),
the server's (psutil over its process tree) and the whole machine's (/proc/stat via psutil); the
remainder is what other work on the machine used meanwhile.
"""

from __future__ import annotations

import csv
import json
import os
import pstats
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest._bundle import DEFAULT_ROOT, Recipe, prepare_bench_bundle
from loadtest._payloads import PayloadSource
from loadtest._procs import (
    Server,
    children_cpu_seconds,
    machine_busy_seconds,
    machine_info,
    redis_server,
)

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE  # the directory, as documented: `locust -f loadtest/`
WRK_SCRIPT = HERE / "wrk_fixed_rate.lua"
STAGES = ("parse", "queue", "model", "index", "cache")
SECTION_TITLE = "## Service under load"
Say = Callable[[str], None]

# The targets, at `compare_users` concurrent users.
TARGETS = {
    "post_vs_ceiling_min": 0.60,
    "post_vs_naive_min": 5.0,
    "post_p99_ms_max": 50.0,
    "get_vs_ceiling_min": 0.85,
}


@dataclass
class BenchConfig:
    """What `run_bench` measures; the defaults are the documented benchmark."""

    tags: int = 1_000_000
    root: Path = DEFAULT_ROOT
    bundle: Path | None = None  # serve this (indexed) bundle instead of building the benchmark's
    run: Path | None = None  # training run the naive peer serves (default: the benchmark's / the bundle's)
    payloads: Path | None = None  # JSON-lines request bodies (default: the benchmark's held-out users)
    levels: tuple[int, ...] = (1, 16, 64)
    compare_users: int = 16
    duration_s: float = 30.0
    warmup_s: float = 5.0
    k: int = 50
    read_users: int = 10
    wrk_rate: float | None = None  # None: half the service's POST throughput at compare_users
    wrk_connections: int = 16
    wrk_threads: int = 2
    peers: bool = True
    profile: bool = True
    profile_s: float = 15.0
    workers: int = 1
    service_settings: dict[str, str] = field(default_factory=dict)  # e.g. {"batch_max_wait_ms": "2"}
    out_dir: Path | None = None  # CSVs, logs and the profile (default: root/serve-<timestamp>)
    command: str = ""  # the command line, recorded in the report


# -- locust and wrk ----------------------------------------------------------------------------
def _percentile(response_times: Mapping[int, int], n: int, q: float) -> int:
    """locust's own percentile over its rounded response-time histogram (stats.py), so that the
    figures match what locust prints; reimplemented because importing locust monkey-patches."""
    below = int(n * q)
    seen = 0
    for ms in sorted(response_times, reverse=True):
        seen += response_times[ms]
        if n - seen <= below:
            return ms
    return 0


def _figures(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """requests/s, percentiles and failures of one or more locust stats entries taken together."""
    n = sum(int(e["num_requests"]) for e in entries)
    if n == 0:
        return {"requests": 0, "failures": sum(int(e["num_failures"]) for e in entries), "rps": 0.0}
    times: dict[int, int] = {}
    for e in entries:
        for ms, count in e["response_times"].items():
            times[int(ms)] = times.get(int(ms), 0) + int(count)
    start = min(float(e["start_time"]) for e in entries)
    end = max(float(e["last_request_timestamp"] or start) for e in entries)
    return {
        "requests": n,
        "failures": sum(int(e["num_failures"]) for e in entries),
        "rps": round(n / max(end - start, 1e-3), 1),
        "p50_ms": _percentile(times, n, 0.50),
        "p95_ms": _percentile(times, n, 0.95),
        "p99_ms": _percentile(times, n, 0.99),
        "avg_ms": round(sum(float(e["total_response_time"]) for e in entries) / n, 2),
        "max_ms": round(max(float(e["max_response_time"]) for e in entries), 1),
        "avg_bytes": round(sum(int(e["total_content_length"]) for e in entries) / n),
    }


def _read_locust(prefix: Path, names: Sequence[str]) -> dict[str, Any]:
    """Figures of the entries `names` from locust's final `--json-file`, with failure examples
    from its CSV (written every second, so possibly a second behind: examples only)."""
    stats_file = Path(f"{prefix}.json")
    if not stats_file.is_file():
        raise RuntimeError(f"locust wrote no {stats_file}; see {prefix}.log")
    entries = [e for e in json.loads(stats_file.read_text()) if e["name"] in names]
    out = _figures(entries)
    fail_file = Path(f"{prefix}_failures.csv")
    if fail_file.is_file():
        out["failure_examples"] = [
            {"name": r["Name"], "error": r["Error"][:300], "count": int(r["Occurrences"])}
            for r in csv.DictReader(fail_file.open())
        ][:5]
    return out


class _CpuWindow:
    """CPU used by the load generator, the server and the machine over one run."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.gen0 = children_cpu_seconds()
        self.srv0 = server.cpu_seconds()
        self.busy0, self.t0 = machine_busy_seconds()

    def close(self) -> dict[str, float]:
        busy1, t1 = machine_busy_seconds()
        wall = max(t1 - self.t0, 1e-9)
        gen = (children_cpu_seconds() - self.gen0) / wall
        srv = (self.server.cpu_seconds() - self.srv0) / wall
        machine = (busy1 - self.busy0) / wall
        return {
            "loadgen_cores": round(gen, 2),
            "service_cores": round(srv, 2),
            "machine_busy_cores": round(machine, 2),
            "other_cores": round(max(0.0, machine - gen - srv), 2),
        }


def run_locust(
    server: Server,
    user_class: str,
    users: int,
    duration_s: float,
    prefix: Path,
    source_args: Sequence[str],
    k: int,
    read_users: int,
) -> dict[str, Any]:
    """locust headless: `users` simulated users of `user_class` for `duration_s` against `server`."""
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        server.url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{duration_s:g}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(prefix),
        "--json-file",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
        "--k",
        str(k),
        "--read-users",
        str(read_users),
        "--payload-seed",
        "0",
        *source_args,
        user_class,
    ]
    window = _CpuWindow(server)
    with Path(f"{prefix}.log").open("wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    cpu = window.close()
    if proc.returncode != 0:
        raise RuntimeError(f"locust exited with status {proc.returncode}; see {prefix}.log")
    post, get = "POST /profile", "GET /profile/[user]"
    names = {"CachedReadUser": [get], "MixedUser": [post, get]}.get(user_class, [post])
    result = {"tool": "locust", "users": users, "duration_s": duration_s, **_read_locust(prefix, names), **cpu}
    if user_class == "MixedUser":  # the row is both together; each on its own besides
        result["mix"] = {"post": _read_locust(prefix, [post]), "get": _read_locust(prefix, [get])}
    return result


def write_wrk_bodies(source: PayloadSource, path: Path, k: int, n: int = 1000) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps(source.body(rng, f"wrk-{i}", k)) + "\n")
    return path


def run_wrk(
    server: Server,
    rate: float | None,
    connections: int,
    threads: int,
    duration_s: float,
    bodies: Path,
    log_path: Path,
) -> dict[str, Any]:
    """wrk at a fixed rate on POST /profile (see wrk_fixed_rate.lua for how, and its limits).

    `rate=None`: a closed loop instead, every connection sending as soon as its answer is in.
    """
    exe = shutil.which("wrk")
    if exe is None:
        return {"tool": "wrk", "skipped": "wrk is not installed (Debian: apt-get install wrk)"}
    threads = max(1, min(threads, connections))
    cmd = [
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(WRK_SCRIPT),
        server.url + "/profile",
        "--",
        f"{rate or 1:g}",
        str(threads),
        str(bodies),
    ]
    env = {**os.environ, "UTPM_WRK_CLOSED_LOOP": "1" if rate is None else "0"}
    window = _CpuWindow(server)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    cpu = window.close()
    log_path.write_text(proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (status {proc.returncode}); see {log_path}")
    out = json.loads(line.removeprefix("WRK_JSON "))
    out["target_rate"] = rate  # the script's `done` runs in a Lua state that never saw the arguments
    errors = out.pop("errors")
    return {
        "tool": "wrk",
        "connections": connections,
        "threads": threads,
        "duration_s": duration_s,
        **out,
        "failures": int(sum(errors.values())),
        "errors": errors,
        **cpu,
    }


# -- the service's /metrics ----------------------------------------------------------------------
def scrape_metrics(url: str) -> dict[str, float]:
    """Every sample of the service's /metrics as {"name{label=value,...}": value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def stage_breakdown(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """Per-stage mean times, batch sizes and server-side latency between two scrapes."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    stages: dict[str, Any] = {}
    for stage in STAGES:
        n = delta(f"utpm_stage_seconds_count{{stage={stage}}}")
        if n > 0:
            stages[stage] = {"mean_ms": round(1000 * delta(f"utpm_stage_seconds_sum{{stage={stage}}}") / n, 3)}
    out: dict[str, Any] = {"stages": stages}
    batches = delta("utpm_batch_size_count{}")
    if batches > 0:
        buckets = {}
        prev = 0.0
        for key in sorted(
            (k for k in after if k.startswith("utpm_batch_size_bucket{")),
            key=lambda k: float(re.search(r"le=([^,}]+)", k).group(1)),  # type: ignore[union-attr]
        ):
            le = re.search(r"le=([^,}]+)", key).group(1)  # type: ignore[union-attr]
            cum = delta(key)
            if cum - prev > 0:
                buckets[f"<={le}"] = int(cum - prev)
            prev = cum
        out["batches"] = {
            "count": int(batches),
            "mean_size": round(delta("utpm_batch_size_sum{}") / batches, 2),
            "histogram": buckets,
        }
    served = {}
    for key in after:
        m = re.fullmatch(r"utpm_request_seconds_count\{route=([^,]+),status=([^}]+)\}", key)
        if m and delta(key) > 0:
            total = delta(key.replace("_count{", "_sum{"))
            served[f"{m.group(1)} {m.group(2)}"] = {
                "count": int(delta(key)),
                "mean_ms": round(1000 * total / delta(key), 3),
            }
    out["server_latency"] = served
    hits = delta("utpm_cache_requests_total{result=hit}")
    if hits > 0:
        out["cache_hits"] = {
            "count": int(hits),
            "near_cache_share": round(delta("utpm_near_cache_hits_total{}") / hits, 3),
        }
    by_generation = {}
    for g in range(3):
        n = delta(f"utpm_gc_pause_seconds_count{{generation={g}}}")
        total = delta(f"utpm_gc_pause_seconds_sum{{generation={g}}}")
        by_generation[str(g)] = {"count": int(n), "mean_ms": round(1000 * total / n, 2) if n else None}
    out["gc_pauses"] = {
        "count": sum(v["count"] for v in by_generation.values()),
        "total_ms": round(1000 * sum(delta(f"utpm_gc_pause_seconds_sum{{generation={g}}}") for g in range(3)), 1),
        "by_generation": by_generation,
    }
    trips = delta("utpm_cache_read_batch_size_count{}")
    if trips > 0:
        out["redis_reads_per_round_trip"] = round(delta("utpm_cache_read_batch_size_sum{}") / trips, 2)
    return out


# -- cProfile of the event loop -------------------------------------------------------------------
_GROUPS = (
    ("idle (waiting in epoll)", ("select.epoll", "selectors.py")),
    ("socket send/recv (system calls)", ("_socket.socket",)),
    ("thread hand-offs (batch results)", ("_thread.lock", "_queue.SimpleQueue", "concurrent/futures", "threading.py")),
    ("h11 (HTTP/1.1 parsing)", ("h11",)),
    ("uvicorn", ("uvicorn",)),
    ("asyncio", ("asyncio",)),
    ("starlette/fastapi routing", ("starlette", "fastapi")),
    ("pydantic validation", ("pydantic",)),
    ("JSON (orjson/json)", ("orjson", "json")),
    ("redis client", ("redis",)),
    ("prometheus metrics", ("prometheus_client",)),
    ("feature encoding (utpm.features)", ("utpm/features",)),
    ("service code", ("service/",)),
    ("numpy", ("numpy",)),
)


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """Own time of the profiled (event-loop) thread by library and the top functions."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    groups: dict[str, float] = {}
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        where = f"{file}:{line}({func})"
        group = next((g for g, needles in _GROUPS if any(n in where for n in needles)), "other")
        groups[group] = groups.get(group, 0.0) + tt
        rows.append((tt, ct, nc, where))
    busy = total - groups.get("idle (waiting in epoll)", 0.0)
    rows.sort(reverse=True)

    def short(where: str) -> str:
        return re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", where).replace(str(HERE.parent) + "/", "")

    return {
        "profiled_seconds": round(total, 2),
        "busy_seconds": round(busy, 2),
        "by_group_share_of_busy": {
            g: round(t / busy, 3)
            for g, t in sorted(groups.items(), key=lambda x: -x[1])
            if g != "idle (waiting in epoll)"
        },
        "top_functions": [
            {"function": short(w), "calls": nc, "own_s": round(tt, 3), "cumulative_s": round(ct, 3)}
            for tt, ct, nc, w in rows[:top]
            if "epoll" not in w
        ],
    }


# -- the run ----------------------------------------------------------------------------------------
def _warm_up(server: Server, cfg: BenchConfig, source_args: Sequence[str], prefix: Path) -> None:
    """A short run whose figures are dropped: first requests pay for lazy initialisation."""
    if cfg.warmup_s <= 0:
        return
    run_locust(server, "ComputeUser", cfg.compare_users, cfg.warmup_s, prefix, source_args, cfg.k, cfg.read_users)


def _with_metrics(server: Server, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    before = scrape_metrics(server.url)
    result = run()
    result["service_metrics"] = stage_breakdown(before, scrape_metrics(server.url))
    return result


def _bundle_facts(bundle: Path) -> dict[str, Any]:
    from index.infos import IndexInfos
    from model_export.manifest import Manifest

    manifest = Manifest.read(bundle)
    infos = IndexInfos.read(bundle)
    return {
        "path": str(bundle),
        "version": manifest.bundle_version,
        "model": manifest.model.get("name"),
        "preset": manifest.model.get("preset_name"),
        "tag_rows": manifest.tag_count,
        "servable_tags": manifest.tag_count - 2,  # rows 0 and 1: padding and OOV
        "dim": manifest.user_dim,
        "fields": {f.name: {"max_len": f.max_len, "vocab_size": f.vocab_size} for f in manifest.fields},
        "index": {
            "factory": infos.factory,
            "params": infos.params,
            "recall": infos.recall,
            "search_qps_batched": infos.search_qps,
        },
        "run": manifest.model.get("run"),
    }


def run_bench(cfg: BenchConfig, progress: Say | None = None) -> dict[str, Any]:
    """Run the benchmark of the module docstring and return its report (JSON-able)."""
    say = progress or (lambda _msg: None)
    started = datetime.now(UTC)
    out_dir = cfg.out_dir or cfg.root / f"serve-{started:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_build: dict[str, Any] | None = None
    run_dir: Path | None
    if cfg.bundle is None:
        built = prepare_bench_bundle(Recipe.for_tags(cfg.tags), cfg.root, progress=say)
        bundle, run_dir = built.bundle, cfg.run or built.run
        payloads = cfg.payloads or (built.payloads if built.payloads.is_file() else None)
        bundle_build = built.info
    else:
        bundle, payloads = cfg.bundle, cfg.payloads
        run_dir = cfg.run
    facts = _bundle_facts(bundle)
    if run_dir is None and facts.get("run") and Path(str(facts["run"])).is_dir():
        run_dir = Path(str(facts["run"]))
    source_args = ["--payloads", str(payloads)] if payloads else ["--bundle", str(bundle)]
    source = PayloadSource.open(bundle, payloads)
    bodies = write_wrk_bodies(source, out_dir / "wrk_bodies.jsonl", cfg.k)
    settings = {f"UTPM_{k.upper()}": str(v) for k, v in cfg.service_settings.items()}
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": cfg.command,
        "machine": machine_info(),
        "bundle": facts,
        "bundle_build": bundle_build,
        "payloads": source.describe(),
        "config": {
            "levels": list(cfg.levels),
            "compare_users": cfg.compare_users,
            "duration_s": cfg.duration_s,
            "k": cfg.k,
            "workers": cfg.workers,
            "service_settings": dict(cfg.service_settings),
        },
        "runs": {},
    }
    runs: dict[str, Any] = report["runs"]
    d = cfg.duration_s

    with redis_server() as redis_url:
        env = {"UTPM_BUNDLE": str(bundle), "UTPM_REDIS_URL": redis_url, "UTPM_LOG_LEVEL": "WARNING", **settings}
        say(f"service: starting uvicorn ({cfg.workers} worker(s)) on {facts['servable_tags']:,} tags")
        with Server(
            "utpm", "service.main:create_app", env, cfg.workers, out_dir / "utpm.log", ready_path="/readyz"
        ) as srv:
            _warm_up(srv, cfg, source_args, out_dir / "utpm_warmup")
            for n in cfg.levels:
                say(f"service: POST /profile, {n} users, {d:g}s")
                runs[f"utpm/post/{n}"] = _with_metrics(
                    srv,
                    lambda n=n: run_locust(  # type: ignore[misc]
                        srv, "ComputeUser", n, d, out_dir / f"utpm_post_{n}", source_args, cfg.k, cfg.read_users
                    ),
                )
            c = cfg.compare_users
            say(f"service: GET /profile (cache hits), {c} users, {d:g}s")
            runs[f"utpm/get/{c}"] = _with_metrics(
                srv,
                lambda: run_locust(
                    srv, "CachedReadUser", c, d, out_dir / "utpm_get", source_args, cfg.k, cfg.read_users
                ),
            )
            say(f"service: mix (1 POST : 4 GET), {c} users, {d:g}s")
            runs[f"utpm/mix/{c}"] = _with_metrics(
                srv,
                lambda: run_locust(srv, "MixedUser", c, d, out_dir / "utpm_mix", source_args, cfg.k, cfg.read_users),
            )
            post_rps = runs.get(f"utpm/post/{c}", {}).get("rps") or 100.0
            rate = cfg.wrk_rate or max(1.0, round(post_rps / 2))
            say(f"service: wrk at a fixed {rate:g} requests/s, {cfg.wrk_connections} connections, {d:g}s")
            runs["utpm/wrk"] = _with_metrics(
                srv,
                lambda: run_wrk(srv, rate, cfg.wrk_connections, cfg.wrk_threads, d, bodies, out_dir / "wrk.log"),
            )
        # The same GET run with the near cache off: every hit is a Redis round trip.
        say(f"service, near cache off: GET /profile (cache hits from Redis), {c} users, {d:g}s")
        with Server(
            "utpm-redis-only",
            "service.main:create_app",
            {**env, "UTPM_NEAR_CACHE_TTL_MS": "0"},
            cfg.workers,
            out_dir / "utpm_redis_only.log",
            ready_path="/readyz",
        ) as srv:
            _warm_up(srv, cfg, source_args, out_dir / "redis_only_warmup")
            runs[f"utpm-near-cache-off/get/{c}"] = _with_metrics(
                srv,
                lambda: run_locust(
                    srv, "CachedReadUser", c, d, out_dir / "utpm_get_redis_only", source_args, cfg.k, cfg.read_users
                ),
            )
        if cfg.profile:
            prof = out_dir / "service.prof"
            say(f"service under cProfile: POST /profile, {c} users, {cfg.profile_s:g}s")
            with Server(
                "utpm-profiled",
                "service.main:create_app",
                env,
                1,
                out_dir / "utpm_profiled.log",
                profile_to=prof,
                ready_path="/readyz",
            ) as srv:
                _warm_up(srv, cfg, source_args, out_dir / "profiled_warmup")
                runs["utpm-profiled/post"] = run_locust(
                    srv, "ComputeUser", c, cfg.profile_s, out_dir / "profiled_post", source_args, cfg.k, cfg.read_users
                )
            report["profile"] = summarize_profile(prof) if prof.is_file() else {"error": "no profile written"}
        if cfg.peers:
            say(f"ceiling: POST and GET, {c} users, {d:g}s each")
            with Server(
                "ceiling",
                "loadtest._ceiling:create_app",
                {"UTPM_BUNDLE": str(bundle)},
                cfg.workers,
                out_dir / "ceiling.log",
            ) as srv:
                _warm_up(srv, cfg, source_args, out_dir / "ceiling_warmup")
                runs[f"ceiling/post/{c}"] = run_locust(
                    srv, "ComputeUser", c, d, out_dir / "ceiling_post", source_args, cfg.k, cfg.read_users
                )
                runs[f"ceiling/get/{c}"] = run_locust(
                    srv, "CachedReadUser", c, d, out_dir / "ceiling_get", source_args, cfg.k, cfg.read_users
                )
            if run_dir is None:
                say("naive peer skipped: no training run (give --run)")
            else:
                say(f"naive peer (PyTorch eager + numpy brute force): POST, {c} users, {d:g}s")
                with Server(
                    "naive",
                    "loadtest._naive_peer:create_app",
                    {"UTPM_NAIVE_RUN": str(run_dir)},
                    1,
                    out_dir / "naive.log",
                ) as srv:
                    _warm_up(srv, cfg, source_args, out_dir / "naive_warmup")
                    runs[f"naive/post/{c}"] = run_locust(
                        srv, "ComputeUser", c, d, out_dir / "naive_post", source_args, cfg.k, cfg.read_users
                    )
    report["summary"] = summarize(report, cfg.compare_users)
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["artifacts"] = str(out_dir)
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize(report: Mapping[str, Any], c: int) -> dict[str, Any]:
    """Ratios against the ceiling and the naive peer, and each target met or not."""
    runs = report["runs"]
    post = runs.get(f"utpm/post/{c}", {})
    get = runs.get(f"utpm/get/{c}", {})
    ceiling_post = runs.get(f"ceiling/post/{c}", {})
    ceiling_get = runs.get(f"ceiling/get/{c}", {})
    naive = runs.get(f"naive/post/{c}", {})
    ratios = {
        "post_vs_ceiling": _ratio(post.get("rps"), ceiling_post.get("rps")),
        "post_vs_naive": _ratio(post.get("rps"), naive.get("rps")),
        "get_vs_ceiling": _ratio(get.get("rps"), ceiling_get.get("rps")),
        "get_near_cache_off_vs_ceiling": _ratio(
            runs.get(f"utpm-near-cache-off/get/{c}", {}).get("rps"), ceiling_get.get("rps")
        ),
    }

    def check(value: float | None, bound: float, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= bound if at_least else value <= bound)
        return {"value": value, "target": (">= " if at_least else "<= ") + f"{bound:g}", "met": met}

    targets = {
        "post_vs_ceiling": check(ratios["post_vs_ceiling"], TARGETS["post_vs_ceiling_min"], True),
        "post_vs_naive": check(ratios["post_vs_naive"], TARGETS["post_vs_naive_min"], True),
        "post_p99_ms": check(post.get("p99_ms"), TARGETS["post_p99_ms_max"], False),
        "get_vs_ceiling": check(ratios["get_vs_ceiling"], TARGETS["get_vs_ceiling_min"], True),
    }
    failed = sum(int(r.get("failures", 0)) for r in runs.values())
    return {"compare_users": c, "ratios": ratios, "targets": targets, "failed_requests": failed}


def _ratio_lines(s: Mapping[str, Any]) -> list[str]:
    off = s["ratios"].get("get_near_cache_off_vs_ceiling")
    if off is None:
        return []
    return [
        f"GET /profile hits with the near cache off (every hit a Redis round trip) vs the ceiling: "
        f"{_fmt(off, 3)} (for reference; the target row above is the service as configured by default).",
        "",
    ]


# -- the report -------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_markdown(report: Mapping[str, Any], json_path: Path | None = None) -> str:
    """The dated subsection of docs/performance.md for one run, from its report only."""
    m, b, cfg, runs, s = report["machine"], report["bundle"], report["config"], report["runs"], report["summary"]
    c = s["compare_users"]
    when = report["started_at"].replace("T", " ").replace("+00:00", " UTC")
    lines = [
        f"### Run of {when} on {m['hostname']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['os']}, Python {m['python']}.",
        f"- Command: `{report['command'] or 'utpm bench serve'}`"
        + (f"; full JSON: `{json_path}`" if json_path else "")
        + f"; logs and CSVs: `{report['artifacts']}`.",
        f"- Bundle {b['version']}: {b['model']} ({b['preset']} preset), {b['servable_tags']:,} servable tags "
        f"x {b['dim']}, index `{b['index']['factory']}` {b['index']['params'] or ''} "
        f"(recall {', '.join(f'{k} {v}' for k, v in b['index']['recall'].items())}).",
        f"- Requests: {report['payloads']}; k = {cfg['k']}; {cfg['duration_s']:g} s per run; "
        f"{cfg['workers']} uvicorn worker(s); settings {cfg['service_settings'] or 'defaults'}; Redis cache.",
        "",
        "| server | scenario | users | req/s | p50 ms | p95 ms | p99 ms | failed | load gen cores | server cores "
        "| other work cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in runs.items():
        parts = key.split("/")
        server, scenario = parts[0], parts[1]
        users = r.get("users") or f"{r.get('connections')} conn @ {r.get('target_rate'):g}/s"
        rps = r.get("rps", r.get("achieved_rate"))
        lines.append(
            f"| {server} | {scenario} | {users} | {_fmt(rps)} | {_fmt(r.get('p50_ms'))} | {_fmt(r.get('p95_ms'))} "
            f"| {_fmt(r.get('p99_ms'))} | {_fmt(r.get('failures'))} | {_fmt(r.get('loadgen_cores'), 2)} "
            f"| {_fmt(r.get('service_cores'), 2)} | {_fmt(r.get('other_cores'), 2)} |"
        )
    lines += ["", f"Targets at {c} users:", "", "| target | measured | wanted | met |", "|---|---:|---:|---|"]
    labels = {
        "post_vs_ceiling": "POST /profile req/s vs the ceiling",
        "post_vs_naive": "POST /profile req/s vs the naive peer",
        "post_p99_ms": "POST /profile p99 (ms)",
        "get_vs_ceiling": "GET /profile (hits) req/s vs the ceiling",
    }
    for key, t in s["targets"].items():
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {labels[key]} | {_fmt(t['value'], 3)} | {t['target']} | {met} |")
    lines += ["", *_ratio_lines(s), f"Failed requests over all runs: {s['failed_requests']}.", ""]
    lines += _stage_lines(runs, c)
    prof = report.get("profile")
    if prof and "by_group_share_of_busy" in prof:
        lines += [
            f"Event-loop thread under cProfile ({prof['busy_seconds']} s busy of {prof['profiled_seconds']} s; "
            "cProfile inflates Python-heavy parts, read the shares, not the seconds):",
            "",
            "| where | share of busy time |",
            "|---|---:|",
        ]
        lines += [f"| {g} | {v:.0%} |" for g, v in prof["by_group_share_of_busy"].items() if v >= 0.01]
        lines.append("")
    return "\n".join(lines) + "\n"


def _stage_lines(runs: Mapping[str, Any], c: int) -> list[str]:
    rows = [(k, r["service_metrics"]) for k, r in runs.items() if "service_metrics" in r]
    if not rows:
        return []
    out = [
        "Service-side time per request by stage (mean ms, from `utpm_stage_seconds`; model and index are the "
        "time of the batch the request rode in), mean batch size, and the server-side total "
        "(`utpm_request_seconds` of the run's main route: GET for the get run, POST for the others; the get "
        "run's stages are those of the POSTs that profiled its users first, and its cache stage is the reads):",
        "",
        "| run | " + " | ".join(STAGES) + " | batch size | server total | near-cache share of hits "
        "| reads per Redis round trip | GC pauses: count (total ms) |",
        "|---|" + "---:|" * (len(STAGES) + 5),
    ]
    for key, sm in rows:
        stages = sm.get("stages", {})
        route = "/profile/{user_id} 2xx" if "/get" in key else "/profile 2xx"
        total = sm.get("server_latency", {}).get(route, {}).get("mean_ms")
        batch = sm.get("batches", {}).get("mean_size")
        cells = " | ".join(_fmt(stages.get(st, {}).get("mean_ms"), 2) for st in STAGES)
        near = sm.get("cache_hits", {}).get("near_cache_share")
        trip = sm.get("redis_reads_per_round_trip")
        gcp = sm.get("gc_pauses")
        gc_cell = f"{gcp['count']} ({gcp['total_ms']:g})" if gcp else "-"
        out.append(
            f"| {key} | {cells} | {_fmt(batch, 1)} | {_fmt(total, 2)} | {_fmt(near, 2)} | {_fmt(trip, 1)} | {gc_cell} |"
        )
    out.append("")
    return out


def write_docs(docs: Path, markdown: str, methodology: str) -> None:
    """Insert `markdown` at the end of the "Service under load" section of `docs`, creating the
    section (with `methodology`) when it is missing; other sections are left as they are."""
    text = docs.read_text() if docs.is_file() else "# Performance\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION_TITLE), None)
    if start is None:
        if not text.endswith("\n"):
            text += "\n"
        text += f"\n{SECTION_TITLE}\n\n{methodology.strip()}\n\n{markdown}"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        head = "".join(lines[:end]).rstrip("\n") + "\n\n"
        tail = "".join(lines[end:])
        text = head + markdown + ("\n" + tail if tail else "")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)


METHODOLOGY = """\
`utpm bench serve` (loadtest/_bench.py) produces the runs below: it serves the benchmark bundle
with `uvicorn --factory service.main:create_app` and a private redis-server, drives it with locust
(loadtest/locustfile.py) and wrk (loadtest/wrk_fixed_rate.lua), and serves an empty FastAPI
endpoint (the ceiling, loadtest/_ceiling.py) and a naive peer (loadtest/_naive_peer.py) the same
way. Each run below was appended by the command it names; nothing in it is edited by hand.
"""
