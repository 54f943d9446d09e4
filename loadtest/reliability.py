"""`utpm bench reliability`: the fault, overload, reload and soak scenarios of docs/reliability.md.

Each scenario starts its own redis-server and the service (`procs`) on an indexed bundle, drives
it with locust's `OpenLoopUser` (requests due on a fixed schedule whether or not earlier ones have
answered; latency counted from when each was due), injects its fault on the ticks of that run, and
reports what every request got. Traffic stays on 127.0.0.1.

    redis-outage  POST + GET load; redis-server killed (SIGKILL) at 1/3, restarted at 2/3
    overload      the sustainable rate measured closed-loop, then 3x that rate open-loop
    reload        load while /admin/reload swaps between two bundles every 2 s
    soak          a steady moderate rate for 10 minutes: memory growth and latency drift
    bad-bodies    POST + GET load; in the middle third one client sends bad bodies of about 1 MiB
    bad-bodies-anonymous   the same against a service with a write key, which the load sends and the
                  bad bodies' client does not have
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest.drivers import locust_args, outcome_summary, run_locust, run_open_loop
from loadtest.hostile import hostile_bodies
from loadtest.measure import machine_info, percentiles
from loadtest.procs import Redis, Server
from loadtest.serve import settings_env
from loadtest.speed import ProbeByMinute

API_KEY = "reliability-admin-key"
WRITE_KEY = "reliability-write-key"  # bad-bodies-anonymous: the load's key
K = 20
Say = Callable[[str], None]


@contextmanager
def service(bundle: Path, redis_url: str, workdir: Path, write_key: str | None = None) -> Iterator[Server]:
    """The service with an admin key, and a write key if given (writes are open without one)."""
    from service.config import hash_key

    keys = f"admin:{hash_key(API_KEY)}" + (f", write:{hash_key(write_key)}" if write_key else "")
    env = settings_env(bundle=bundle, redis_url=redis_url, auth_keys=keys, log_level="WARNING")
    with Server("service.main:create_app", env, log_path=workdir / "service.log", ready_path="/readyz") as srv:
        yield srv


def _window(rows: list[dict[str, Any]], kind: str, t0: float = 0.0, t1: float = float("inf")) -> dict[str, Any]:
    return outcome_summary([r for r in rows if r["kind"] == kind and t0 <= r["t"] < t1])


def redis_outage(bundle: Path, workdir: Path, say: Say, rate: float = 60, duration_s: float = 30) -> dict[str, Any]:
    with Redis() as redis, service(bundle, redis.url, workdir) as srv:
        kill_at, back_at = duration_s / 3, 2 * duration_s / 3
        events: dict[str, float] = {}

        def tick(t: float) -> None:
            if "killed" not in events and t >= kill_at:
                redis.kill()
                events["killed"] = round(t, 2)
                say(f"  t={t:.0f}s redis-server killed")
            if "restarted" not in events and t >= back_at:
                redis.start()
                events["restarted"] = round(t, 2)
                say(f"  t={t:.0f}s redis-server restarted")

        rows = run_open_loop(
            srv, rate, duration_s, workdir / "load", locust_args(["--bundle", str(bundle)], K), 0.5, tick
        )
    # recovery: from the restart to the first GET the cache answers again (200, or 404 for a profile
    # the restarted, empty redis-server no longer holds) and to the first cache hit
    after = [r for r in rows if r["kind"] == "get" and r["t"] >= events["restarted"]]
    answered = next((r["t"] for r in after if r["status"] in (200, 404)), float("nan"))
    hit = next((r["t"] for r in after if r["status"] == 200), float("nan"))
    return {
        "rate_rps": rate,
        "duration_s": duration_s,
        "events_s": events,
        "post": _window(rows, "post"),
        "get": _window(rows, "get"),
        "post_during_outage": _window(rows, "post", events["killed"], events["restarted"]),
        "get_during_outage": _window(rows, "get", events["killed"], events["restarted"]),
        "recovery_s": round(answered - events["restarted"], 2),
        "first_hit_after_restart_s": round(hit - events["restarted"], 2),
        "note": "the restarted redis-server has no persistence: profiles cached before the kill are gone "
        "(GET answers 404 for them, as it should) until they are computed again",
    }


def overload(bundle: Path, workdir: Path, say: Say, duration_s: float = 20, rate: float = 0) -> dict[str, Any]:
    with Redis() as redis, service(bundle, redis.url, workdir) as srv:
        extra = locust_args(["--bundle", str(bundle)], K)
        capacity = run_locust(srv, "ComputeUser", 16, 10, workdir / "capacity", extra)["rps"]
        say(f"  sustainable rate (16 closed-loop users): {capacity:.0f} req/s")
        rss = [srv.rss_mb()]
        rate = rate or 3 * capacity
        rows = run_open_loop(srv, rate, duration_s, workdir / "load", extra, 0.0, lambda _t: rss.append(srv.rss_mb()))
        alive = srv.process is not None and srv.process.poll() is None
        healthy = alive and httpx.get(srv.base_url + "/healthz", timeout=5).status_code == 200
    # over the time to the last answer: a late generator stretches the run past `duration_s`
    span = max([duration_s, *(r["t"] + r["latency_ms"] / 1000 for r in rows)])
    return {
        "sustainable_rps": round(capacity, 1),
        "offered_rps": round(rate, 1),
        "duration_s": duration_s,
        "post": _window(rows, "post"),
        "accepted_rps": round(sum(1 for r in rows if r["status"] == 200) / span, 1),
        "shed": sum(1 for r in rows if r["status"] in (429, 503)),
        "rss_mb_before": round(rss[0], 1),
        "rss_mb_peak": round(max(rss), 1),
        "alive_after": healthy,
    }


def _second_bundle(bundle: Path, workdir: Path, say: Say) -> Path:
    """Another bundle beside `bundle`: the same data trained at seed 1, so a new version."""
    other = bundle.parent / (bundle.name + "-b")
    if (other / "index_infos.json").exists():
        return other
    from pipeline import DataSource, build_bundle
    from utpm.models.presets import get_preset
    from utpm.training.trainer import TrainConfig

    run_dir = Path(json.loads((bundle / "manifest.json").read_text())["model"]["run"])
    data = Path(json.loads((run_dir / "config.json").read_text())["protocol"]["source"])
    say(f"  training a second bundle (seed 1) on {data}")
    config = TrainConfig(model="utpm", preset=get_preset("movielens"), seed=1, epochs=3)
    built = build_bundle(workdir / "b", DataSource("generic", data), config)
    shutil.copytree(built.bundle, other)
    return other


def reload(bundle: Path, workdir: Path, say: Say, rate: float = 60, duration_s: float = 30) -> dict[str, Any]:
    other = _second_bundle(bundle, workdir, say)
    with Redis() as redis, service(bundle, redis.url, workdir) as srv:
        statuses: list[int] = []
        targets = [other.name, bundle.name]

        def tick(t: float) -> None:
            if int(t) % 2 == 0:
                body = {"bundle": targets[len(statuses) % 2]}
                r = httpx.post(srv.base_url + "/admin/reload", json=body, headers={"x-api-key": API_KEY}, timeout=60)
                statuses.append(r.status_code)

        rows = run_open_loop(
            srv, rate, duration_s, workdir / "load", locust_args(["--bundle", str(bundle)], K), 0.3, tick
        )
    return {
        "rate_rps": rate,
        "duration_s": duration_s,
        "reloads": len(statuses),
        "reload_statuses": sorted(set(statuses)),
        "post": _window(rows, "post"),
        "get": _window(rows, "get"),
    }


def soak(
    bundle: Path, workdir: Path, say: Say, rate: float = 40, duration_s: float = 600, warmup_s: float = 60
) -> dict[str, Any]:
    with Redis() as redis, service(bundle, redis.url, workdir) as srv:
        samples: list[tuple[float, float]] = []
        probes = ProbeByMinute()  # a latency drift is read against how fast the cores ran meanwhile

        def tick(t: float) -> None:
            probes.tick(t)
            if int(t) % 10 == 0:
                samples.append((round(t, 1), round(srv.rss_mb(), 1)))
            if int(t) % 60 == 0 and samples:
                last = probes.minutes[-1]["median_ms"] if probes.minutes else None
                say(f"  t={t:.0f}s rss {samples[-1][1]:.0f} MB, CPU probe {last} ms in the last minute")

        try:
            rows = run_open_loop(
                srv, rate, duration_s, workdir / "load", locust_args(["--bundle", str(bundle)], K), 0.5, tick
            )
        finally:
            per_minute = probes.finish()
    after = [m for t, m in samples if t >= warmup_s]
    growth = (after[-1] - after[0]) / after[0] * 100 if len(after) > 1 else None
    minutes = [_window(rows, "post", m * 60, (m + 1) * 60) for m in range(int(duration_s // 60))]
    return {
        "rate_rps": rate,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "rss_mb": samples,
        "rss_growth_after_warmup_pct": None if growth is None else round(growth, 2),
        "post": _window(rows, "post"),
        "get": _window(rows, "get"),
        "post_p50_ms_by_minute": [m["p50_ms"] for m in minutes],
        "post_p99_ms_by_minute": [m["p99_ms"] for m in minutes],
        "cpu_probe_ms_by_minute": [m["median_ms"] for m in per_minute[: len(minutes)]],
    }


def bad_bodies(
    bundle: Path,
    workdir: Path,
    say: Say,
    rate: float = 60,
    duration_s: float = 30,
    bad_rate: float = 2,
    anonymous: bool = False,
) -> dict[str, Any]:
    """One client sends `loadtest.hostile`'s bodies, `bad_rate` a second (each shape in turn, one at a
    time), from 1/3 to 2/3 of the run, while the others keep their open-loop POSTs and GETs: what a bad
    body costs the service, and what it costs everyone else (their latency before, during and after).
    `anonymous`: the service has a write key, the others send it, the bad bodies' client has none."""
    load_args = locust_args(["--bundle", str(bundle)], K) + (["--api-key", WRITE_KEY] if anonymous else [])
    with Redis() as redis, service(bundle, redis.url, workdir, WRITE_KEY if anonymous else None) as srv:
        bodies = list(hostile_bodies())
        sent: list[dict[str, Any]] = []
        window: dict[str, float] = {}
        stop = threading.Event()

        def attack() -> None:
            with httpx.Client(base_url=srv.base_url, timeout=60) as client:
                start = time.perf_counter()
                while not stop.is_set():
                    due = start + len(sent) / bad_rate
                    if time.perf_counter() < due:
                        stop.wait(due - time.perf_counter())
                        continue
                    b = bodies[len(sent) % len(bodies)]
                    t0 = time.perf_counter()
                    try:
                        r = client.post(b.path, content=b.body, headers={"content-type": "application/json"})
                        status, kind = (
                            r.status_code,
                            r.json().get("type") if "json" in r.headers["content-type"] else None,
                        )
                    except httpx.HTTPError as e:  # counted as status 0, as the load generator counts them
                        status, kind = 0, type(e).__name__
                    ms = (time.perf_counter() - t0) * 1000
                    sent.append({"shape": b.name, "status": status, "ms": ms, "type": kind})

        attacker = threading.Thread(target=attack, name="bad-bodies", daemon=True)

        def tick(t: float) -> None:
            if "started" not in window and t >= duration_s / 3:
                window["started"] = round(t, 2)
                attacker.start()
                say(f"  t={t:.0f}s sending bad bodies")
            if "stopped" not in window and t >= 2 * duration_s / 3:
                stop.set()
                attacker.join()
                window["stopped"] = round(t, 2)
                say(f"  t={t:.0f}s stopped after {len(sent)} bad bodies")

        rows = run_open_loop(srv, rate, duration_s, workdir / "load", load_args, 0.5, tick)
        alive = srv.process is not None and srv.process.poll() is None
    t0, t1 = window["started"], window["stopped"]
    by_shape: dict[str, list[dict[str, Any]]] = {b.name: [] for b in bodies}
    for s in sent:
        by_shape[s["shape"]].append(s)
    shapes = {
        b.name: {
            "path": b.path,
            "bytes": len(b.body),
            "sent": len(by_shape[b.name]),
            "statuses": sorted({s["status"] for s in by_shape[b.name]}),
            "problem_types": sorted({str(s["type"]) for s in by_shape[b.name]}),
            "answer_ms": percentiles([s["ms"] for s in by_shape[b.name]]),
        }
        for b in bodies
    }
    return {
        "rate_rps": rate,
        "duration_s": duration_s,
        "bad_rate_rps": bad_rate,
        "anonymous": anonymous,
        "events_s": window,
        "bad_bodies": shapes,
        "bad_bodies_per_s": round(len(sent) / (t1 - t0), 2),
        "post": _window(rows, "post"),
        "get": _window(rows, "get"),
        **{
            f"{kind}_{part}": _window(rows, kind, a, b)
            for kind in ("post", "get")
            for part, a, b in (("before", 0.0, t0), ("during", t0, t1), ("after", t1, float("inf")))
        },
        "alive_after": alive,
    }


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "redis-outage": redis_outage,
    "overload": overload,
    "reload": reload,
    "soak": soak,
    "bad-bodies": bad_bodies,
    "bad-bodies-anonymous": functools.partial(bad_bodies, anonymous=True),
}


def run_scenario(name: str, bundle: Path, say: Say, command: str = "", **kw: Any) -> dict[str, Any]:
    """Run one scenario on `bundle`; its report (JSON-able), with the machine and the command."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    if not (bundle / "index_infos.json").exists():
        raise FileNotFoundError(f"{bundle} is not an indexed bundle; run `make demo` or `utpm index build` first")
    started, machine = datetime.now(UTC), machine_info()
    with tempfile.TemporaryDirectory(prefix="utpm-rel-") as tmp:
        t0 = time.perf_counter()
        out = SCENARIOS[name](bundle.resolve(), Path(tmp), say, **kw)
        wall = round(time.perf_counter() - t0, 1)
    head = {"kind": "reliability", "scenario": name, "started_at": started.isoformat(timespec="seconds")}
    return {**head, **out, "wall_s": wall, "command": command, "machine": machine, "bundle": str(bundle)}
