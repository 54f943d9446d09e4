"""`utpm bench tune`: service settings side by side, POST /profile under wrk, in alternation.

For choosing a batch size, thread counts or the worker count on a given machine. Each variant is
a service start with its own settings (`KEY=VALUE` service settings, plus `workers=N` for uvicorn
worker processes); the variants run one after another, `rounds` times over (A B A B ...), so that
drift on a shared machine hits them alike, each round a closed loop of `connections` wrk
connections on `POST /profile` (the benchmark bundle's held-out users, as in `utpm bench serve`).
What it reports per run: requests/s, latency p50/p90/p99, the server's and the load generator's
cores, and the service's GC pauses; per variant, the medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest._bench import run_wrk, scrape_metrics, stage_breakdown, write_wrk_bodies
from loadtest._bundle import DEFAULT_ROOT, Recipe, prepare_bench_bundle
from loadtest._payloads import PayloadSource
from loadtest._procs import Server, machine_info, redis_server


@dataclass
class TuneConfig:
    variants: Sequence[Mapping[str, str]]  # {"batch_max_size": "8", "workers": "2", ...}
    tags: int = 1_000_000
    root: Path = DEFAULT_ROOT
    bundle: Path | None = None
    connections: int = 16
    duration_s: float = 10.0
    rounds: int = 2
    k: int = 50
    out_dir: Path | None = None
    command: str = ""
    base_settings: Mapping[str, str] = field(default_factory=dict)


def parse_variant(text: str) -> dict[str, str]:
    """ "batch_max_size=8,workers=2" -> {"batch_max_size": "8", "workers": "2"}; "" -> {} (defaults)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"a variant is KEY=VALUE[,KEY=VALUE...] (service settings, workers=N), got {text!r}")
        out[key.strip().lower()] = value.strip()
    return out


def variant_name(variant: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "defaults"


def run_tune(cfg: TuneConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    if not cfg.variants:
        raise ValueError("give at least one variant")
    started = datetime.now(UTC)
    out_dir = cfg.out_dir or cfg.root / f"tune-{started:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.bundle is None:
        built = prepare_bench_bundle(Recipe.for_tags(cfg.tags), cfg.root, progress=say)
        bundle, payloads = built.bundle, (built.payloads if built.payloads.is_file() else None)
    else:
        bundle, payloads = cfg.bundle, None
    bodies = write_wrk_bodies(PayloadSource.open(bundle, payloads), out_dir / "bodies.jsonl", cfg.k)
    runs: list[dict[str, Any]] = []
    with redis_server() as redis_url:
        for rnd in range(cfg.rounds):
            for i, variant in enumerate(cfg.variants):
                name = variant_name(variant)
                settings = {**cfg.base_settings, **variant}
                workers = int(settings.pop("workers", "1"))
                env = {
                    "UTPM_BUNDLE": str(bundle),
                    "UTPM_REDIS_URL": redis_url,
                    "UTPM_LOG_LEVEL": "WARNING",
                    **{f"UTPM_{k.upper()}": v for k, v in settings.items()},
                }
                say(f"round {rnd + 1}/{cfg.rounds}: {name}, {cfg.connections} connections, {cfg.duration_s:g}s")
                log = out_dir / f"service_{rnd}_{i}.log"
                with Server(f"tune-{i}", "service.main:create_app", env, workers, log, ready_path="/readyz") as srv:
                    warm = out_dir / f"warmup_{rnd}_{i}.log"
                    run_wrk(srv, None, cfg.connections, 1, min(5.0, cfg.duration_s), bodies, warm)
                    before = scrape_metrics(srv.url)
                    wrk_log = out_dir / f"wrk_{rnd}_{i}.log"
                    result = run_wrk(srv, None, cfg.connections, 1, cfg.duration_s, bodies, wrk_log)
                    # with several workers /metrics is one worker's: GC pauses are then a sample
                    metrics = stage_breakdown(before, scrape_metrics(srv.url))
                runs.append({"round": rnd, "variant": name, "workers": workers, **result, "service_metrics": metrics})
    summary = {}
    for variant in cfg.variants:
        name = variant_name(variant)
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {
            "median_rps": round(statistics.median(r["achieved_rate"] for r in mine), 1),
            "median_p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 2),
            "median_p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 2),
            "failures": sum(r["failures"] for r in mine),
        }
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "command": cfg.command,
        "machine": machine_info(),
        "bundle": str(bundle),
        "connections": cfg.connections,
        "duration_s": cfg.duration_s,
        "rounds": cfg.rounds,
        "runs": runs,
        "summary": summary,
        "artifacts": str(out_dir),
    }


def render_tune(report: Mapping[str, Any]) -> str:
    when = report["started_at"].replace("T", " ").replace("+00:00", " UTC")
    lines = [
        f"`{report['command'] or 'utpm bench tune'}` ({when}, {report['machine']['cores']} cores, "
        f"{report['connections']} wrk connections, closed loop, {report['duration_s']:g} s per run, "
        f"{report['rounds']} rounds in alternation):",
        "",
        "| round | variant | req/s | p50 ms | p90 ms | p99 ms | failed | server cores | wrk cores | GC pauses |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        gcp = r["service_metrics"].get("gc_pauses", {})
        # With several workers, two scrapes of /metrics may come from different processes.
        full = gcp.get("by_generation", {}).get("2", {})
        gc_cell = f"{gcp.get('count', 0)} ({gcp.get('total_ms', 0):g} ms)" if r.get("workers", 1) == 1 else "n/a"
        if r.get("workers", 1) == 1 and full.get("count"):
            gc_cell += f"; {full['count']} full, {full['mean_ms']:g} ms each"
        lines.append(
            f"| {r['round'] + 1} | {r['variant']} | {r['achieved_rate']:,.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['failures']} | {r['service_cores']:.2f} | {r['loadgen_cores']:.2f} "
            f"| {gc_cell} |"
        )
    lines += ["", "| variant | median req/s | median p50 ms | median p99 ms | failed |", "|---|---:|---:|---:|---:|"]
    for name, s in report["summary"].items():
        lines.append(
            f"| {name} | {s['median_rps']:,.0f} | {s['median_p50_ms']:.1f} | {s['median_p99_ms']:.1f} "
            f"| {s['failures']} |"
        )
    return "\n".join(lines) + "\n"
