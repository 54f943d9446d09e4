"""`utpm bench serve`: the service under load beside a ceiling and a naive peer, as a list of runs.

`plan()` lists the runs (server, load, users, seconds); `run_bench` starts each server once, in
order, one at a time (on 2 cores a second server would compete), warms it up, drives it with each of
its runs and writes one JSON report. The servers:

- `utpm`: the service (`service.main:create_app`) with a private redis-server as its cache;
- `utpm-near-cache-off`: the same with `near_cache_ttl_ms=0` (every cache hit a Redis round trip);
- `utpm-profiled`: the same under cProfile (the event-loop thread): where the Python time goes;
- `ceiling` (`ceiling.py`): validates the same request and answers a body of the same shape without
  computing; `naive` (`naive_peer.py`): PyTorch eager and a numpy brute-force top-K, no batching;
- `raw-asgi` (`raw_asgi.py`): no framework, orjson, under wrk: what HTTP allows (issue 16).

Before the servers, the engine's roofline (`roofline.py`: the service's engine without HTTP, in a
subprocess) is measured, so the report gives the service as a fraction of both in one run.

Every run of the service scrapes /metrics before and after (per-stage times, batch sizes, GC
pauses); CPU is accounted per run (`measure.CpuWindow`). docs/performance.md, "Method", says why.
"""

from __future__ import annotations

import itertools
import json
import pstats
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest.bundle import DEFAULT_MODEL, DEFAULT_ROOT, Recipe, prepare_bench_bundle
from loadtest.drivers import (
    locust_args,
    outcome_summary,
    run_locust,
    run_open_loop,
    run_wrk,
    write_bodies,
    write_read_paths,
)
from loadtest.measure import CpuWindow, machine_info
from loadtest.payloads import PayloadSource
from loadtest.procs import Redis, Server
from loadtest.roofline import RooflineConfig, engine_in_subprocess, roofline_at

HERE = Path(__file__).resolve().parent
STAGES = ("parse", "queue", "encode", "model", "index", "cache")
Say = Callable[[str], None]

# The issues' targets, at `compare_users` concurrent users. The roofline and raw-ASGI ones (issue 16)
# are judged on the bundle they name: POST vs the engine's roofline on the 1M-tag benchmark bundle,
# POST and GET hits vs the raw ASGI ceiling on a tiny bundle (where HTTP, not the model, is the cost).
TARGETS = {
    "post_vs_ceiling": (0.60, True),
    "post_vs_naive": (5.0, True),
    "post_p99_ms": (50.0, False),
    "get_vs_ceiling": (0.85, True),
    "post_vs_roofline": (0.70, True),
    "post_vs_raw_asgi": (0.15, True),
    "get_vs_raw_asgi": (0.50, True),
}


def settings_env(**fields: object) -> dict[str, str]:
    """Service settings by `service.config.Settings` field name -> their environment variables."""
    from service.config import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    unknown = sorted(set(fields) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"not a service setting: {', '.join(unknown)} (see service/config.py)")
    return {f"{prefix}{k}".upper(): str(v) for k, v in fields.items()}


def check_settings(settings: Mapping[str, str]) -> None:
    """ValueError naming the setting when the service would refuse `settings` (Settings field name ->
    value as text) or does not have one of them: before a benchmark starts a server or loads a bundle."""
    from pydantic import ValidationError

    from service.config import Settings, settings_error

    settings_env(**settings)  # names a key that is not a setting
    try:
        Settings.model_validate({"bundle": ".", **settings})  # the values, as the service will read them
    except ValidationError as e:
        raise ValueError(settings_error(e)) from None


@dataclass
class BenchConfig:
    """What `run_bench` measures; the defaults are the documented benchmark."""

    tags: int = 1_000_000
    model: str = DEFAULT_MODEL  # the benchmark bundle's model (`loadtest.bundle.MODELS`)
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
    open_rate: float | None = None  # None: half the service's POST throughput at compare_users
    peers: bool = True
    roofline: bool = True  # the engine's roofline (a subprocess, first) and the raw ASGI ceiling under wrk
    roofline_s: float = 3.0  # seconds per engine row
    profile: bool = True
    profile_s: float = 15.0
    workers: int = 1
    service_settings: dict[str, str] = field(default_factory=dict)  # Settings field -> value
    out_dir: Path | None = None  # logs, CSVs and the profile (default: root/serve-<timestamp>)
    command: str = ""  # the command line, recorded in the report


@dataclass(frozen=True)
class Run:
    key: str  # "<server>/<scenario>/<users>", the row of the report
    server: str
    load: str  # a locust user class, "open" (OpenLoopUser at a fixed rate) or "wrk"
    users: int
    seconds: float


def plan(cfg: BenchConfig, naive: bool) -> list[Run]:
    """The runs of one benchmark, in order; consecutive runs of one server share its start."""
    c, d = cfg.compare_users, cfg.duration_s
    runs = [Run(f"utpm/post/{n}", "utpm", "ComputeUser", n, d) for n in cfg.levels]
    runs += [
        Run(f"utpm/get/{c}", "utpm", "CachedReadUser", c, d),
        Run(f"utpm/mix/{c}", "utpm", "MixedUser", c, d),
        Run("utpm/open", "utpm", "open", c, d),
        Run(f"utpm/wrk/{c}", "utpm", "wrk", c, d),
    ]
    if cfg.roofline:
        runs.append(Run(f"utpm/wrk-get/{c}", "utpm", "wrk-get", c, d))
    runs.append(Run(f"utpm-near-cache-off/get/{c}", "utpm-near-cache-off", "CachedReadUser", c, d))
    if cfg.profile:
        runs.append(Run(f"utpm-profiled/post/{c}", "utpm-profiled", "ComputeUser", c, cfg.profile_s))
    if cfg.peers:
        runs += [
            Run(f"ceiling/post/{c}", "ceiling", "ComputeUser", c, d),
            Run(f"ceiling/get/{c}", "ceiling", "CachedReadUser", c, d),
        ]
    if cfg.roofline:
        runs += [
            Run(f"raw-asgi/wrk/{c}", "raw-asgi", "wrk", c, d),
            Run(f"raw-asgi/wrk-get/{c}", "raw-asgi", "wrk-get", c, d),
        ]
    if cfg.peers and naive:
        runs.append(Run(f"naive/post/{c}", "naive", "ComputeUser", c, d))
    return runs


# -- the service's /metrics ----------------------------------------------------------------------
def scrape_metrics(url: str, processes: int = 1, attempts: int = 200) -> dict[str, float] | None:
    """Every sample of the service's /metrics as {"name{label=value,...}": value}, summed over its
    `processes` uvicorn workers; None if some worker did not answer within `attempts` scrapes.

    Each scrape is one worker's (the kernel hands each new connection to one of them), so with
    several workers the scrapes are repeated, on new connections, until every pid has answered."""
    from prometheus_client.parser import text_string_to_metric_families

    by_pid: dict[str, dict[str, float]] = {}
    for _ in range(attempts):
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        pid = next((k for k in samples if k.startswith("utpm_process{")), "")
        by_pid.setdefault(pid, samples)
        if len(by_pid) >= processes:
            break
    if len(by_pid) < processes:
        return None
    out: dict[str, float] = {}
    for samples in by_pid.values():
        for key, value in samples.items():
            out[key] = out.get(key, 0.0) + value
    return out


def stage_breakdown(before: Mapping[str, float] | None, after: Mapping[str, float] | None) -> dict[str, Any]:
    """Per-stage mean times, batch sizes and server-side latency between two scrapes."""
    if before is None or after is None:
        return {"unavailable": "not every worker process answered /metrics"}

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
        m = re.fullmatch(r"utpm_request_seconds_count\{method=([^,]+),route=([^,]+),status=([^}]+)\}", key)
        if m and delta(key) > 0:
            total = delta(key.replace("_count{", "_sum{"))
            served[f"{m.group(1)} {m.group(2)} {m.group(3)}"] = {
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
def _bundle_facts(bundle: Path) -> dict[str, Any]:
    from index.infos import IndexInfos
    from model_export.manifest import Manifest

    manifest, infos = Manifest.read(bundle), IndexInfos.read(bundle)
    return {
        "path": str(bundle),
        "version": manifest.bundle_version,
        "model": manifest.model.get("name"),
        "preset": manifest.model.get("preset_name"),
        "servable_tags": manifest.tag_count - 2,  # rows 0 and 1: padding and OOV
        "dim": manifest.user_dim,
        "index": {"factory": infos.factory, "params": infos.params, "recall": infos.recall},
        "run": manifest.model.get("run"),
    }


def run_bench(cfg: BenchConfig, progress: Say | None = None) -> dict[str, Any]:
    """Run `plan(cfg)` and return the report (JSON-able)."""
    say = progress or (lambda _msg: None)
    started = datetime.now(UTC)
    out_dir = cfg.out_dir or cfg.root / f"serve-{started:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle, run_dir, payloads, bundle_build = cfg.bundle, cfg.run, cfg.payloads, None
    if bundle is None:
        built = prepare_bench_bundle(Recipe.for_tags(cfg.tags, cfg.model), cfg.root, progress=say)
        bundle, run_dir, bundle_build = built.bundle, run_dir or built.run, built.info
        payloads = payloads or (built.payloads if built.payloads.is_file() else None)
    facts = _bundle_facts(bundle)
    if run_dir is None and facts["run"] and Path(str(facts["run"])).is_dir():
        run_dir = Path(str(facts["run"]))
    if facts["model"] != "utpm":
        run_dir = None  # the naive peer implements the paper model's tower only
        say(f"no naive peer for a {facts['model']} bundle (it serves the paper model only)")
    source = PayloadSource.open(bundle, payloads)
    extra = locust_args(["--payloads", str(payloads)] if payloads else ["--bundle", str(bundle)], cfg.k, cfg.read_users)
    bodies = write_bodies(source, out_dir / "wrk_bodies.jsonl", cfg.k)
    reads = write_read_paths(out_dir / "wrk_paths.txt", [f"wrk-read-{i}" for i in range(cfg.read_users)], cfg.k)
    runs: dict[str, Any] = {}
    report: dict[str, Any] = {
        "kind": "serve",
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
        "runs": runs,
    }
    if cfg.roofline:
        say("engine roofline (a subprocess: encode + model + index + render, no HTTP)")
        rcfg = RooflineConfig(
            bundle, payloads, cfg.k, seconds=cfg.roofline_s, asgi=False, settings=cfg.service_settings
        )
        report["roofline"] = engine_in_subprocess(rcfg, out_dir / "roofline.json", out_dir / "roofline.log")
    c = cfg.compare_users
    with Redis() as redis:
        env = {"bundle": bundle, "redis_url": redis.url, "log_level": "WARNING", **cfg.service_settings}
        prof = out_dir / "service.prof"
        servers: dict[str, dict[str, Any]] = {
            "utpm": {"factory": "service.main:create_app", "env": settings_env(**env), "ready_path": "/readyz"},
            "utpm-near-cache-off": {
                "factory": "service.main:create_app",
                "ready_path": "/readyz",
                "env": settings_env(**env, near_cache_ttl_ms=0),
            },
            "utpm-profiled": {
                "factory": "service.main:create_app",
                "env": settings_env(**env),
                "ready_path": "/readyz",
                "profile_to": prof,
                "workers": 1,
            },
            "ceiling": {"factory": "loadtest.ceiling:create_app", "env": {"UTPM_BUNDLE": str(bundle)}},
            "raw-asgi": {"factory": "loadtest.raw_asgi:create_app", "env": {"UTPM_BUNDLE": str(bundle)}},
            "naive": {
                "factory": "loadtest.naive_peer:create_app",
                "env": {"UTPM_NAIVE_RUN": str(run_dir)},
                "workers": 1,
            },
        }
        for name, group in itertools.groupby(plan(cfg, naive=run_dir is not None), key=lambda r: r.server):
            kw = {"workers": cfg.workers, "log_path": out_dir / f"{name}.log", **servers[name]}
            say(f"{name}: starting {kw['factory']}")
            with Server(**kw) as srv:
                if cfg.warmup_s > 0:  # first requests pay for lazy initialisation: dropped
                    run_locust(srv, "ComputeUser", c, cfg.warmup_s, out_dir / f"{name}_warmup", extra)
                for r in group:
                    say(f"  {r.key}: {r.load}, {r.users} users, {r.seconds:g}s")
                    scraped = r.server.startswith("utpm")
                    before = scrape_metrics(srv.base_url, kw["workers"]) if scraped else None
                    runs[r.key] = _one(r, srv, cfg, extra, runs, (bodies, reads), out_dir)
                    if scraped:
                        runs[r.key]["service_metrics"] = stage_breakdown(
                            before, scrape_metrics(srv.base_url, kw["workers"])
                        )
        report["profile"] = summarize_profile(prof) if prof.is_file() else None
    report["summary"] = summarize(runs, c, report.get("roofline"))
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["artifacts"] = str(out_dir)
    return report


def _one(
    r: Run,
    srv: Server,
    cfg: BenchConfig,
    extra: list[str],
    runs: Mapping[str, Any],
    wrk_files: tuple[Path, Path],
    out: Path,
) -> dict[str, Any]:
    prefix = out / r.key.replace("/", "_")
    bodies, reads = wrk_files
    if r.load == "wrk":
        return run_wrk(srv, r.users, r.seconds, bodies, Path(f"{prefix}.log"))
    if r.load == "wrk-get":  # cache hits: the read users' profiles are computed first
        first = [json.loads(line) for line in bodies.read_text().splitlines()[: cfg.read_users]]
        for i, body in enumerate(first):
            httpx.post(srv.base_url + "/profile", json={**body, "user_id": f"wrk-read-{i}"}, timeout=30)
        return run_wrk(srv, r.users, r.seconds, reads, Path(f"{prefix}.log"), method="GET")
    if r.load != "open":
        return run_locust(srv, r.load, r.users, r.seconds, prefix, extra)
    rate = cfg.open_rate or max(1.0, round((runs.get(f"utpm/post/{cfg.compare_users}", {}).get("rps") or 100) / 2))
    window = CpuWindow(srv.cpu_seconds)
    rows = run_open_loop(srv, rate, r.seconds, prefix, extra)
    s = outcome_summary(rows, r.seconds)
    failures = s["requests"] - s["by_status"].get("200", 0) + s["wrong_answers"]
    return {"tool": "locust open loop", "target_rate": rate, **s, "failures": failures, **window.close()}


def summarize(runs: Mapping[str, Any], c: int, roofline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Ratios against the ceilings (FastAPI, raw ASGI, the engine's roofline) and the naive peer, and
    each target met or not."""

    def rps(key: str) -> float | None:
        return runs.get(key, {}).get("rps")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    ratios = {
        "post_vs_ceiling": ratio(rps(f"utpm/post/{c}"), rps(f"ceiling/post/{c}")),
        "post_vs_naive": ratio(rps(f"utpm/post/{c}"), rps(f"naive/post/{c}")),
        "get_vs_ceiling": ratio(rps(f"utpm/get/{c}"), rps(f"ceiling/get/{c}")),
        "get_near_cache_off_vs_ceiling": ratio(rps(f"utpm-near-cache-off/get/{c}"), rps(f"ceiling/get/{c}")),
        "post_vs_raw_asgi": ratio(rps(f"utpm/wrk/{c}"), rps(f"raw-asgi/wrk/{c}")),
        "get_vs_raw_asgi": ratio(rps(f"utpm/wrk-get/{c}"), rps(f"raw-asgi/wrk-get/{c}")),
    }
    if roofline is not None:
        best = roofline["best"]["users_per_s"]
        batch = runs.get(f"utpm/post/{c}", {}).get("service_metrics", {}).get("batches", {}).get("mean_size")
        ratios["post_vs_roofline"] = ratio(rps(f"utpm/post/{c}"), best)
        # the roofline at the batch size the service formed (what its batching gave away is the difference)
        ratios["post_vs_roofline_at_formed_batch"] = ratio(
            rps(f"utpm/post/{c}"), roofline_at(roofline, batch) if batch else None
        )
        ratios["wrk_post_vs_roofline"] = ratio(rps(f"utpm/wrk/{c}"), best)
        # how fast the cores ran in the two measurements the ratio divides (`loadtest.speed`)
        ratios["cpu_probe_post_over_roofline"] = ratio(
            runs.get(f"utpm/post/{c}", {}).get("cpu_probe", {}).get("median_ms"),
            (roofline["best"].get("cpu_probe") or {}).get("median_ms"),
        )
    values = {**ratios, "post_p99_ms": runs.get(f"utpm/post/{c}", {}).get("p99_ms")}
    values.setdefault("post_vs_roofline", None)
    targets = {}
    for name, (bound, at_least) in TARGETS.items():
        v = values[name]
        met = None if v is None else (v >= bound if at_least else v <= bound)
        targets[name] = {"value": v, "target": (">= " if at_least else "<= ") + f"{bound:g}", "met": met}
    failed = sum(int(r.get("failures", 0)) for r in runs.values())
    return {"compare_users": c, "ratios": ratios, "targets": targets, "failed_requests": failed}
