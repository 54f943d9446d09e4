"""`utpm bench tune`: service settings side by side, POST /profile under wrk, in alternation.

For choosing a batch size or the worker count on a given machine. Each variant is a service start
with its own settings (`service.config.Settings` fields, plus `workers=N` for uvicorn worker
processes); the variants run one after another, `rounds` times over (A B A B ...), so that drift
on a shared machine hits them alike, each a closed loop of `connections` wrk connections on
`POST /profile` (the benchmark bundle's held-out users, as in `utpm bench serve`). Reported per
run: requests/s, percentiles, the server's and wrk's cores, GC pauses; per variant, the medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.bundle import DEFAULT_MODEL, DEFAULT_ROOT, Recipe, prepare_bench_bundle
from loadtest.drivers import run_wrk, write_bodies
from loadtest.measure import machine_info
from loadtest.payloads import PayloadSource
from loadtest.procs import Redis, Server
from loadtest.serve import check_settings, scrape_metrics, settings_env, stage_breakdown


@dataclass
class TuneConfig:
    variants: Sequence[Mapping[str, str]]  # {"batch_max_users": "8", "workers": "2", ...}
    tags: int = 1_000_000
    model: str = DEFAULT_MODEL  # the benchmark bundle's model (`loadtest.bundle.MODELS`)
    root: Path = DEFAULT_ROOT
    bundle: Path | None = None
    payloads: Path | None = None  # request bodies (default: the benchmark bundle's, or drawn from `bundle`)
    connections: int = 16
    duration_s: float = 10.0
    rounds: int = 2
    k: int = 50
    out_dir: Path | None = None
    command: str = ""


def parse_variant(text: str) -> dict[str, str]:
    """ "batch_max_users=8,workers=2" -> {"batch_max_users": "8", "workers": "2"}; "" -> {} (defaults)."""
    out: dict[str, str] = {}
    for part in filter(str.strip, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"a variant is KEY=VALUE[,KEY=VALUE...] (service settings, workers=N), got {text!r}")
        out[key.strip().lower()] = value.strip()
    _check_variant(text, out)
    return out


def _check_variant(text: str, variant: Mapping[str, str]) -> None:
    """A variant the service would refuse to start with is refused now, naming the setting (not as a
    server that never became ready)."""
    settings = dict(variant)
    workers = settings.pop("workers", "1")
    if not workers.isdigit() or int(workers) < 1:
        raise ValueError(f"variant {text!r}: workers must be a whole number of at least 1, got {workers!r}")
    try:
        check_settings(settings)
    except ValueError as e:
        raise ValueError(f"variant {text!r}: {e}") from None


def variant_name(variant: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "defaults"


def run_tune(cfg: TuneConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    if not cfg.variants:
        raise ValueError("give at least one variant")
    started = datetime.now(UTC)
    out_dir = cfg.out_dir or cfg.root / f"tune-{started:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle, payloads = cfg.bundle, cfg.payloads
    if bundle is None:
        built = prepare_bench_bundle(Recipe.for_tags(cfg.tags, cfg.model), cfg.root, progress=say)
        bundle = built.bundle
        payloads = payloads or (built.payloads if built.payloads.is_file() else None)
    bodies = write_bodies(PayloadSource.open(bundle, payloads), out_dir / "bodies.jsonl", cfg.k)
    plan = [(rnd, i, v) for rnd in range(cfg.rounds) for i, v in enumerate(cfg.variants)]
    runs: list[dict[str, Any]] = []
    with Redis() as redis:
        for rnd, i, variant in plan:
            settings = dict(variant)
            workers = int(settings.pop("workers", "1"))
            env = settings_env(bundle=bundle, redis_url=redis.url, log_level="WARNING", **settings)
            say(f"round {rnd + 1}/{cfg.rounds}: {variant_name(variant)}, {cfg.connections} connections")
            log = out_dir / f"service_{rnd}_{i}.log"
            with Server("service.main:create_app", env, workers=workers, log_path=log, ready_path="/readyz") as srv:
                run_wrk(srv, cfg.connections, min(5.0, cfg.duration_s), bodies, out_dir / f"warmup_{rnd}_{i}.log")
                before = scrape_metrics(srv.base_url, workers)
                result = run_wrk(srv, cfg.connections, cfg.duration_s, bodies, out_dir / f"wrk_{rnd}_{i}.log")
                metrics = stage_breakdown(before, scrape_metrics(srv.base_url, workers))
            runs.append(
                {
                    "round": rnd,
                    "variant": variant_name(variant),
                    "workers": workers,
                    **result,
                    "service_metrics": metrics,
                }
            )
    summary = {}
    for name in dict.fromkeys(variant_name(v) for v in cfg.variants):
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {
            "median_rps": round(statistics.median(r["rps"] for r in mine), 1),
            "median_p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 2),
            "median_p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 2),
            "failures": sum(r["failures"] for r in mine),
        }
    return {
        "kind": "tune",
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
