"""`utpm bench roofline`: what this machine allows the service, measured without the service around it.

Two ceilings, each the denominator of a `utpm bench serve` ratio:

- **engine**: the service's own `ProfileEngine` (loaded as the service loads it: its thread settings,
  its checks), fed the load test's request bodies (`loadtest.payloads`), doing per user what a POST
  does besides HTTP: `encode`, the batch's `compute` (model + index: whatever path the bundle's
  engine takes) and the render of the response and the cache record (`service.profile_record`).
  Per batch size, once on one thread (per-user CPU by stage) and once on `batch_workers` threads
  at once, the service's worker count (users/s on the same cores; encoding and rendering hold the
  GIL as on the event loop). No HTTP, no queue, no Redis: a POST cannot go faster than this.
- **raw ASGI** (`raw_asgi.py`): no framework, orjson, the same uvicorn (uvloop, httptools), answering
  POST and GET bodies of the same shape under wrk: what HTTP on this machine allows.

The engine part also runs the A/B of the batch threads' FAISS OpenMP setting (`init_batch_thread`:
one OpenMP thread per search, as set vs OpenMP's default of one per core), alternated in one run;
for a bundle at its linear start, which loads no index, the A/B of its linear path against the same
bundle loaded with `linear_scorer=false` instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from loadtest.measure import machine_info
from loadtest.payloads import PayloadSource
from loadtest.speed import SpeedSampler

Say = Callable[[str], None]
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
BODIES = 1000  # distinct request bodies cycled through (the payload file's first, in a seeded order)


@dataclass
class RooflineConfig:
    bundle: Path
    payloads: Path | None = None
    k: int = 50
    batch_sizes: Sequence[int] = BATCH_SIZES
    seconds: float = 3.0  # per batch size and thread count
    ab_rounds: int = 3
    asgi: bool = True
    connections: int = 16
    duration_s: float = 10.0
    read_users: int = 10
    out_dir: Path | None = None
    command: str = ""
    # service settings by field name (`utpm bench serve --set`): the engine is loaded as that service is
    settings: Mapping[str, str] = field(default_factory=dict)


def _bodies(bundle: Path, payloads: Path | None, k: int) -> list[dict[str, Any]]:
    source = PayloadSource.open(bundle, payloads)
    rng = random.Random(0)
    return [source.body(rng, f"roofline-{i}", k) for i in range(BODIES)]


class EngineBench:
    """One loaded engine and its request bodies; `run` times encode + compute + render."""

    def __init__(self, bundle: Path, payloads: Path | None, k: int, settings: Mapping[str, str] | None = None) -> None:
        from service.config import Settings
        from service.engine import ProfileEngine

        self.settings = Settings.model_validate({**(settings or {}), "bundle": str(bundle), "log_level": "WARNING"})
        self.engine = ProfileEngine.load(bundle, self.settings)
        self.k = k
        self.bodies = _bodies(bundle, payloads, k)

    def _loop(self, batch: int, deadline: float, start: int) -> dict[str, float]:
        engine, k, bodies = self.engine, self.k, self.bodies
        keep = max(k, self.settings.cache_tags)  # what the service computes and caches
        ttl = self.settings.cache_ttl_ms
        acc = {"users": 0.0, "encode_s": 0.0, "model_s": 0.0, "index_s": 0.0, "render_s": 0.0}
        j = start
        while time.perf_counter() < deadline:
            chunk = [bodies[(j + x) % len(bodies)] for x in range(batch)]
            j += batch
            t0 = time.perf_counter()
            users = [engine.encode(b["features"], keep, False) for b in chunk]
            t1 = time.perf_counter()
            computed = engine.compute(users)
            t2 = time.perf_counter()
            now_ms = time.time_ns() // 1_000_000
            for body, user, prof in zip(chunk, users, computed, strict=True):
                rendered = engine.render(body["user_id"], user, prof, now_ms, now_ms + ttl)
                rendered.response(k, cached=False)
                rendered.record()
            t3 = time.perf_counter()
            timings = computed[0].timings
            acc["users"] += batch
            # on the event loop (parse; the paper model's whole encoding) + the batch's, in its thread (utpm-hist)
            acc["encode_s"] += t1 - t0 + timings.encode_s
            acc["model_s"] += timings.model_s  # the batch's: per user, its share (divided by users below)
            acc["index_s"] += timings.index_s
            acc["render_s"] += t3 - t2
        return acc

    def run(self, batch: int, seconds: float, threads: int, init: Callable[[], object] | None) -> dict[str, Any]:
        """`threads` threads (started by `init`, as the service's batch threads are) computing batches of
        `batch` users for `seconds`: users/s, CPU per user (whole process) and per-user stage times."""
        with ThreadPoolExecutor(threads, initializer=init) as pool:
            list(pool.map(lambda _: None, range(threads)))  # threads started (and initialised) first
            warm = time.perf_counter() + min(0.5, seconds / 4)
            list(pool.map(lambda i: self._loop(batch, warm, i * 97), range(threads)))
            with SpeedSampler() as speed:
                c0, t0 = time.process_time(), time.perf_counter()
                deadline = t0 + seconds
                parts = list(pool.map(lambda i: self._loop(batch, deadline, i * 97), range(threads)))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        users = sum(p["users"] for p in parts)
        per_user = {
            f"{stage[:-2]}_ms": round(1000 * sum(p[stage] for p in parts) / users, 4)
            for stage in ("encode_s", "model_s", "index_s", "render_s")
        }
        return {
            "batch": batch,
            "threads": threads,
            "users": int(users),
            "users_per_s": round(users / wall, 1),
            "cpu_ms_per_user": round(1000 * cpu / users, 4),
            "cores_used": round(cpu / wall, 2),
            "per_user": per_user,
            "cpu_probe": speed.figures(),
        }


def measure_engine(cfg: RooflineConfig, say: Say) -> dict[str, Any]:
    """The engine's roofline per batch size, one thread and `batch_workers` threads, and the OpenMP A/B
    (or, for a linear bundle, the A/B of its two paths)."""
    from service.engine import BLAS_THREADS, FAISS_THREADS, ORT_INTRA_THREADS, init_batch_thread

    say(f"engine: loading {cfg.bundle}")
    t0 = time.perf_counter()
    bench = EngineBench(cfg.bundle, cfg.payloads, cfg.k, cfg.settings)
    load_s = time.perf_counter() - t0
    rss_mib = psutil.Process().memory_info().rss / 2**20  # the loaded engine (and the request bodies)
    workers = bench.settings.batch_workers
    rows = []
    for batch in cfg.batch_sizes:
        for threads in dict.fromkeys((1, workers)):
            row = bench.run(batch, cfg.seconds, threads, init_batch_thread)
            say(
                f"  batch {batch:3d}, {threads} thread(s): {row['users_per_s']:9,.1f} users/s, "
                f"{row['cpu_ms_per_user']:.3f} ms CPU per user"
            )
            rows.append(row)
    parallel = [r for r in rows if r["threads"] == workers]
    best = max(parallel, key=lambda r: r["users_per_s"])
    ab_batch = min(bench.settings.batch_max_users, max(cfg.batch_sizes))
    faiss_ab = None
    if bench.engine.index is not None:  # the linear scorer searches no index
        # A/B at the service's batch cap: the batch threads' FAISS OpenMP threads, as set vs OpenMP's default
        arms: dict[str, Callable[[], object] | None] = {
            f"faiss OpenMP threads per batch thread = {FAISS_THREADS} (init_batch_thread)": init_batch_thread,
            "OpenMP default (one per core; before init_batch_thread)": None,
        }
        runs = {name: partial(bench.run, ab_batch, cfg.seconds, workers, init) for name, init in arms.items()}
        faiss_ab = {"batch": ab_batch, "threads": workers, "arms": _alternate(runs, cfg.ab_rounds)}
    linear_ab = None
    if bench.engine.linear is not None:
        # a linear bundle: its linear path against the same bundle loaded to run the ONNX graph and the index
        graph = EngineBench(cfg.bundle, cfg.payloads, cfg.k, {**cfg.settings, "linear_scorer": "false"})
        say(f"  A/B at batch {ab_batch}: the linear path against the ONNX graph")
        paths = {LINEAR_ARM: bench, GRAPH_ARM: graph}
        linear_ab = {
            "batch": ab_batch,
            "threads": workers,
            "arms": _alternate(
                {name: partial(b.run, ab_batch, cfg.seconds, workers, init_batch_thread) for name, b in paths.items()},
                cfg.ab_rounds,
            ),
        }
    return {
        "model": bench.engine.model_name,
        "version": bench.engine.version,
        "execution_provider": bench.engine.execution_provider,
        "index_device": bench.engine.index_device,
        "tags": bench.engine.n_tags,
        "load_s": round(load_s, 1),
        "rss_mib": round(rss_mib),
        "thread_settings": {
            "batch_workers": workers,
            "ort_intra_threads": ORT_INTRA_THREADS,
            "faiss_threads": FAISS_THREADS,
            "blas_threads": BLAS_THREADS,
            "batch_max_users": bench.settings.batch_max_users,
        },
        "seconds_per_row": cfg.seconds,
        "rows": rows,
        "best": {
            "batch": best["batch"],
            "users_per_s": best["users_per_s"],
            "cpu_ms_per_user": best["cpu_ms_per_user"],
            "cpu_probe": best["cpu_probe"],
        },
        **({"faiss_openmp_ab": faiss_ab} if faiss_ab is not None else {}),
        **({"linear_ab": linear_ab} if linear_ab is not None else {}),
    }


LINEAR_ARM = "linear path (b_t + w . phi: no tower, no index)"
GRAPH_ARM = "the ONNX graph (tower and history path; u . o_t = 0)"


def _alternate(arms: Mapping[str, Callable[[], dict[str, Any]]], rounds: int) -> dict[str, dict[str, Any]]:
    """Each arm (one `EngineBench.run`) in turn, the order reversed every other round: per arm medians."""
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    order = list(arms.items())
    for rnd in range(rounds):
        for name, run in order if rnd % 2 == 0 else order[::-1]:
            got[name].append(run())

    def median(runs: list[dict[str, Any]], stage: str) -> float:
        return round(statistics.median(r["per_user"][stage] for r in runs), 4)

    return {
        name: {
            "median_users_per_s": round(statistics.median(r["users_per_s"] for r in runs), 1),
            "median_cpu_ms_per_user": round(statistics.median(r["cpu_ms_per_user"] for r in runs), 4),
            **{f"median_{stage}_per_user": median(runs, stage) for stage in ("encode_ms", "model_ms", "index_ms")},
            "rounds": [r["users_per_s"] for r in runs],
        }
        for name, runs in got.items()
    }


def roofline_at(engine: Mapping[str, Any], batch: float) -> float | None:
    """The engine's users/s on `batch_workers` threads at a (mean) batch size, linear between measured sizes."""
    workers = engine["thread_settings"]["batch_workers"]
    pts = sorted((r["batch"], r["users_per_s"]) for r in engine["rows"] if r["threads"] == workers)
    if not pts:
        return None
    if batch <= pts[0][0]:
        return float(pts[0][1])
    for (b0, v0), (b1, v1) in itertools.pairwise(pts):
        if batch <= b1:
            return float(v0 + (v1 - v0) * (batch - b0) / (b1 - b0))
    return float(pts[-1][1])


def measure_asgi(cfg: RooflineConfig, source: PayloadSource, out_dir: Path, say: Say) -> dict[str, Any]:
    """wrk against the raw ASGI app: POST (the same bodies) and GET (cached-read paths)."""
    from loadtest.drivers import run_wrk, write_bodies, write_read_paths
    from loadtest.procs import Server

    bodies = write_bodies(source, out_dir / "wrk_bodies.jsonl", cfg.k)
    paths = write_read_paths(out_dir / "wrk_paths.txt", [f"roofline-read-{i}" for i in range(cfg.read_users)], cfg.k)
    env = {"UTPM_BUNDLE": str(cfg.bundle)}
    out: dict[str, Any] = {}
    say("raw ASGI: starting loadtest.raw_asgi")
    with Server("loadtest.raw_asgi:create_app", env, log_path=out_dir / "raw-asgi.log") as srv:
        run_wrk(srv, cfg.connections, min(3.0, cfg.duration_s), bodies, out_dir / "raw_warmup.log")
        out["post"] = run_wrk(srv, cfg.connections, cfg.duration_s, bodies, out_dir / "raw_post.log")
        out["get"] = run_wrk(srv, cfg.connections, cfg.duration_s, paths, out_dir / "raw_get.log", method="GET")
    say(f"  POST {out['post']['rps']:,.0f} req/s, GET {out['get']['rps']:,.0f} req/s ({cfg.connections} connections)")
    return out


def run_roofline(cfg: RooflineConfig, progress: Say | None = None, engine: bool = True) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    started = datetime.now(UTC)
    source = PayloadSource.open(cfg.bundle, cfg.payloads)  # a bad file: refused before a run folder exists
    out_dir = cfg.out_dir or Path("artifacts/bench") / f"roofline-{started:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "kind": "roofline",
        "started_at": started.isoformat(timespec="seconds"),
        "command": cfg.command,
        "machine": machine_info(),
        "bundle": str(cfg.bundle),
        "payloads": source.describe(),
        "k": cfg.k,
        "settings": dict(cfg.settings),
    }
    if engine:
        report["engine"] = measure_engine(cfg, say)
    if cfg.asgi:
        report["raw_asgi"] = {
            "connections": cfg.connections,
            "duration_s": cfg.duration_s,
            **measure_asgi(cfg, source, out_dir, say),
        }
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return report


def engine_in_subprocess(cfg: RooflineConfig, path: Path, log: Path) -> dict[str, Any]:
    """`measure_engine` in a process of its own (its bundle's memory is freed before servers start)."""
    import subprocess

    cmd = [sys.executable, "-m", "loadtest.roofline", str(cfg.bundle), "--json", str(path), "--k", str(cfg.k)]
    cmd += ["--seconds", str(cfg.seconds), "--batch", ",".join(map(str, cfg.batch_sizes)), "--no-asgi"]
    if cfg.payloads is not None:
        cmd += ["--payloads", str(cfg.payloads)]
    for name, value in cfg.settings.items():
        cmd += ["--set", f"{name}={value}"]
    with log.open("wb") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0 or not path.is_file():
        raise RuntimeError(f"the engine roofline exited with status {rc}; see {log}")
    return dict(json.loads(path.read_text())["engine"])


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m loadtest.roofline BUNDLE --json OUT [--no-asgi]`: what `utpm bench serve` runs in a subprocess."""
    p = argparse.ArgumentParser()
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--payloads", type=Path)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--no-asgi", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a service setting")
    a = p.parse_args(argv)
    settings = dict(pair.split("=", 1) for pair in a.set)
    cfg = RooflineConfig(
        a.bundle,
        a.payloads,
        a.k,
        tuple(int(x) for x in a.batch.split(",")),
        a.seconds,
        asgi=not a.no_asgi,
        settings=settings,
    )
    report = run_roofline(cfg, progress=lambda m: print(m, flush=True))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
