"""`utpm bench reliability`: the fault, overload, reload and soak scenarios of docs/reliability.md.

Each scenario starts its own redis-server and the service (`uvicorn --factory service.main:create_app`
in a subprocess, settings through UTPM_* variables) on a MovieLens bundle, drives it with an
open-loop load generator (requests start on a fixed schedule whether or not earlier ones have
answered, so a slow server cannot slow the load down), injects the fault, and reports what every
request got. Traffic stays on 127.0.0.1.

    redis-outage  POST + GET load; redis-server killed (SIGKILL) at 1/3, restarted at 2/3
    overload      the sustainable rate measured closed-loop, then 3x that rate open-loop
    reload        load while /admin/reload swaps between two bundles every 2 s
    soak          a steady moderate rate for 10 minutes: memory growth and latency drift
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from loadtest._checks import profile_problem
from loadtest._payloads import PayloadSource
from loadtest._procs import Server, free_port, machine_info, start_redis

SCENARIOS = ("redis-outage", "overload", "reload", "soak")
API_KEY = "reliability-admin-key"
Say = Callable[[str], None]


class RedisProcess:
    """A redis-server that can be killed and brought back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="utpm-rel-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis(self.port, self.dir)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Outcome:
    t: float  # seconds since the start of the run
    kind: str  # "post" | "get"
    status: int  # HTTP status, or 0 for a transport error / timeout
    latency_ms: float
    problem: str | None = None


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    late_starts: int = 0  # requests the generator could not start on time (it was itself saturated)

    def summary(self, kind: str | None = None, t0: float = 0.0, t1: float = float("inf")) -> dict[str, Any]:
        rows = [o for o in self.outcomes if (kind is None or o.kind == kind) and t0 <= o.t < t1]
        ok = sorted(o.latency_ms for o in rows if o.status == 200 and o.problem is None)
        by_status: dict[str, int] = {}
        for o in rows:
            key = "transport_error" if o.status == 0 else str(o.status)
            by_status[key] = by_status.get(key, 0) + 1
        return {
            "requests": len(rows),
            "by_status": dict(sorted(by_status.items())),
            "wrong_answers": sum(1 for o in rows if o.status == 200 and o.problem is not None),
            "p50_ms": _pct(ok, 50),
            "p99_ms": _pct(ok, 99),
        }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    i = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return round(values[i], 2)


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams.

    httpx costs about a millisecond of CPU per request, so a Python generator built on it cannot
    offer three times what the service sustains on the same two cores. This one writes a prepared
    request and reads status, headers and body: tens of microseconds per request.
    """

    def __init__(self, host: str, port: int, max_connections: int = 256) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open = 0
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        async with self._slots:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(head)
                line = await reader.readline()
                if not line and reused:  # the server closed an idle keep-alive connection: reconnect once
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(head)
                    line = await reader.readline()
                status = int(line.split()[1])
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    elif name.lower() == b"connection" and value.strip().lower() == b"close":
                        close = True
                payload = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            if close:
                writer.close()
            else:
                self._idle.append((reader, writer))
            return status, payload

    def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()


async def open_loop(
    url: str,
    source: PayloadSource,
    rate: float,
    duration_s: float,
    get_share: float = 0.0,
    k: int = 20,
    timeout_s: float = 5.0,
    on_tick: Callable[[float], None] | None = None,
) -> LoadResult:
    """Start `rate` requests/s for `duration_s`; a share `get_share` are GETs of users posted before.

    Requests start on schedule whether or not earlier ones have answered (open loop); when the
    generator itself falls behind, the start is counted in `late_starts`.
    """
    result = LoadResult()
    rng = random.Random(0)
    posted: list[str] = []
    host, port = url.split("//", 1)[1].split(":")
    # more connections than the service's queue bound, so that its shedding, not ours, limits the load
    client = RawHttp(host, int(port), max_connections=2000)
    start = time.perf_counter()

    async def one(n: int, kind: str) -> None:
        t = time.perf_counter() - start
        problem: str | None = None
        try:
            if kind == "get":
                user = rng.choice(posted)
                status, raw = await asyncio.wait_for(client.request("GET", f"/profile/{user}?k={k}"), timeout_s)
            else:
                user = f"rel-{n}"
                body = orjson.dumps(source.body(rng, user, k))
                status, raw = await asyncio.wait_for(client.request("POST", "/profile", body), timeout_s)
            if status == 200:
                problem = profile_problem(orjson.loads(raw), user_id=user, k=k, cached=kind == "get")
                if kind == "post":
                    posted.append(user)
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
            status, problem = 0, "transport error"
        result.outcomes.append(Outcome(t, kind, status, (time.perf_counter() - start - t) * 1000, problem))

    tasks: set[asyncio.Task[None]] = set()
    n = 0
    next_tick = 1.0
    while True:
        due = start + n / rate
        if due - start >= duration_s:
            break
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            if now - due > 0.05:
                result.late_starts += 1
            await asyncio.sleep(0)  # let the requests already started make progress
        kind = "get" if posted and rng.random() < get_share else "post"
        task = asyncio.get_running_loop().create_task(one(n, kind))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        if on_tick is not None and time.perf_counter() - start >= next_tick:
            on_tick(time.perf_counter() - start)
            next_tick += 1.0
    if tasks:
        await asyncio.gather(*tasks)
    client.close()
    result.outcomes.sort(key=lambda o: o.t)
    return result


async def closed_loop_rate(
    url: str, source: PayloadSource, users: int = 16, duration_s: float = 10.0, k: int = 20
) -> float:
    """Requests/s that `users` back-to-back clients sustain: the service's capacity."""
    rng = random.Random(1)
    done = 0
    host, port = url.split("//", 1)[1].split(":")
    client = RawHttp(host, int(port), max_connections=users)
    stop = time.perf_counter() + duration_s

    async def user(u: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            status, _ = await client.request("POST", "/profile", orjson.dumps(source.body(rng, f"cap-{u}-{i}", k)))
            done += status == 200
            i += 1

    await asyncio.gather(*(user(u) for u in range(users)))
    client.close()
    return done / duration_s


def rss_mb(server: Server) -> float:
    assert server.proc is not None
    p = psutil.Process(server.proc.pid)
    return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)]) / 2**20


@contextmanager
def service(bundle: Path, redis_url: str, workdir: Path, **settings: str) -> Iterator[Server]:
    env = {
        "UTPM_BUNDLE": str(bundle),
        "UTPM_REDIS_URL": redis_url,
        "UTPM_ADMIN_API_KEY": API_KEY,
        "UTPM_BUNDLE_ROOT": str(bundle.parent),
        **{f"UTPM_{k.upper()}": v for k, v in settings.items()},
    }
    server = Server(
        "service", "service.main:create_app", env=env, log_path=workdir / "service.log", ready_path="/readyz"
    )
    with server:
        yield server


def scenario_redis_outage(
    bundle: Path, workdir: Path, say: Say, rate: float = 60, duration_s: float = 30
) -> dict[str, Any]:
    source = PayloadSource.from_bundle(bundle)
    with RedisProcess() as redis, service(bundle, redis.url, workdir) as srv:
        kill_at, back_at = duration_s / 3, 2 * duration_s / 3
        events: dict[str, float] = {}

        def tick(t: float) -> None:
            if "killed" not in events and t >= kill_at:
                redis.kill()
                events["killed"] = t
                say(f"  t={t:.0f}s redis-server killed")
            if "restarted" not in events and t >= back_at:
                redis.start()
                events["restarted"] = t
                say(f"  t={t:.0f}s redis-server restarted")

        result = asyncio.run(open_loop(srv.url, source, rate, duration_s, get_share=0.5, on_tick=tick))
        # recovery: from the restart to the first GET the cache answers again (200, or 404 for a
        # profile the restarted, empty redis-server no longer holds) and to the first cache hit
        gets_after = [o for o in result.outcomes if o.kind == "get" and o.t >= events["restarted"]]
        answered = next((o.t for o in gets_after if o.status in (200, 404)), float("nan"))
        hit = next((o.t for o in gets_after if o.status == 200), float("nan"))
        return {
            "scenario": "redis-outage",
            "rate_rps": rate,
            "duration_s": duration_s,
            "events_s": events,
            "post": result.summary("post"),
            "get": result.summary("get"),
            "post_during_outage": result.summary("post", events["killed"], events["restarted"]),
            "get_during_outage": result.summary("get", events["killed"], events["restarted"]),
            "recovery_s": round(answered - events["restarted"], 2),
            "first_hit_after_restart_s": round(hit - events["restarted"], 2),
            "note": "the restarted redis-server has no persistence: profiles cached before the kill are gone "
            "(GET answers 404 for them, as it should) until they are computed again",
            "late_starts": result.late_starts,
        }


def scenario_overload(bundle: Path, workdir: Path, say: Say, duration_s: float = 20) -> dict[str, Any]:
    source = PayloadSource.from_bundle(bundle)
    with RedisProcess() as redis, service(bundle, redis.url, workdir) as srv:
        capacity = asyncio.run(closed_loop_rate(srv.url, source))
        say(f"  sustainable rate (16 closed-loop users): {capacity:.0f} req/s")
        rss_before = rss_mb(srv)
        rate = 3 * capacity
        peak = [rss_before]

        def tick(_t: float) -> None:
            peak.append(rss_mb(srv))

        result = asyncio.run(open_loop(srv.url, source, rate, duration_s, on_tick=tick, timeout_s=10))
        alive = srv.proc is not None and srv.proc.poll() is None
        after = httpx.get(srv.url + "/healthz", timeout=5).status_code if alive else 0
        shed = [o for o in result.outcomes if o.status in (429, 503)]
        return {
            "scenario": "overload",
            "sustainable_rps": round(capacity, 1),
            "offered_rps": round(rate, 1),
            "duration_s": duration_s,
            "post": result.summary("post"),
            "accepted_rps": round(sum(1 for o in result.outcomes if o.status == 200) / duration_s, 1),
            "shed": len(shed),
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_peak": round(max(peak), 1),
            "alive_after": alive and after == 200,
            "late_starts": result.late_starts,
        }


def _second_bundle(bundle: Path, workdir: Path, say: Say) -> Path:
    """Another bundle beside `bundle` (the same run exported after one more epoch, so a new version)."""
    other = bundle.parent / (bundle.name + "-b")
    if (other / "index_infos.json").exists():
        return other
    from index.build import build_index
    from model_export.onnx_export import export_bundle
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.models.presets import get_preset
    from utpm.training.trainer import TrainConfig, train

    run_dir = Path(json.loads((bundle / "manifest.json").read_text())["model"]["run"])
    data = Path(json.loads((run_dir / "config.json").read_text())["protocol"]["source"])
    say(f"  training a second bundle (seed 1) on {data}")
    ds = load_dataset(data)
    run = workdir / "run-b"
    train(
        split_protocol(ds, seed=1),
        TrainConfig(model="utpm", preset=get_preset("movielens"), seed=1, epochs=3),
        data=ds,
        out=run,
    )
    export_bundle(run, other, data=data, overwrite=True)
    build_index(other, kind="auto")
    return other


def scenario_reload(bundle: Path, workdir: Path, say: Say, rate: float = 60, duration_s: float = 30) -> dict[str, Any]:
    source = PayloadSource.from_bundle(bundle)
    other = _second_bundle(bundle, workdir, say)
    with RedisProcess() as redis, service(bundle, redis.url, workdir) as srv:
        reloads: list[dict[str, Any]] = []
        targets = [other.name, bundle.name]

        def tick(t: float) -> None:
            if int(t) % 2 == 0:
                r = httpx.post(
                    srv.url + "/admin/reload",
                    json={"bundle": targets[len(reloads) % 2]},
                    headers={"x-api-key": API_KEY},
                    timeout=60,
                )
                reloads.append({"t": round(t, 1), "status": r.status_code})

        result = asyncio.run(open_loop(srv.url, source, rate, duration_s, get_share=0.3, on_tick=tick))
        return {
            "scenario": "reload",
            "rate_rps": rate,
            "duration_s": duration_s,
            "reloads": len(reloads),
            "reload_statuses": sorted({r["status"] for r in reloads}),
            "post": result.summary("post"),
            "get": result.summary("get"),
            "late_starts": result.late_starts,
        }


def scenario_soak(
    bundle: Path, workdir: Path, say: Say, rate: float = 40, duration_s: float = 600, warmup_s: float = 60
) -> dict[str, Any]:
    source = PayloadSource.from_bundle(bundle)
    with RedisProcess() as redis, service(bundle, redis.url, workdir) as srv:
        samples: list[tuple[float, float]] = []

        def tick(t: float) -> None:
            if int(t) % 10 == 0:
                samples.append((round(t, 1), round(rss_mb(srv), 1)))
            if int(t) % 60 == 0:
                say(f"  t={t:.0f}s rss {samples[-1][1] if samples else 0:.0f} MB")

        result = asyncio.run(open_loop(srv.url, source, rate, duration_s, get_share=0.5, on_tick=tick))
        after_warmup = [m for t, m in samples if t >= warmup_s]
        growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0] * 100 if len(after_warmup) > 1 else None
        minutes = [result.summary("post", m * 60, (m + 1) * 60) for m in range(int(duration_s // 60))]
        return {
            "scenario": "soak",
            "rate_rps": rate,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "rss_mb": samples,
            "rss_growth_after_warmup_pct": None if growth is None else round(growth, 2),
            "post": result.summary("post"),
            "get": result.summary("get"),
            "post_p50_ms_by_minute": [m["p50_ms"] for m in minutes],
            "post_p99_ms_by_minute": [m["p99_ms"] for m in minutes],
            "late_starts": result.late_starts,
        }


def run_scenario(name: str, bundle: Path, say: Say, **kw: Any) -> dict[str, Any]:
    runners: dict[str, Callable[..., dict[str, Any]]] = {
        "redis-outage": scenario_redis_outage,
        "overload": scenario_overload,
        "reload": scenario_reload,
        "soak": scenario_soak,
    }
    if name not in runners:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    if not (bundle / "index_infos.json").exists():
        raise FileNotFoundError(f"{bundle} is not an indexed bundle; run `make demo` or `utpm index build` first")
    with tempfile.TemporaryDirectory(prefix="utpm-rel-") as tmp:
        t0 = time.perf_counter()
        out = runners[name](bundle.resolve(), Path(tmp), say, **kw)
        out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out["machine"] = machine_info()
    out["bundle"] = str(bundle)
    return out


DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
MARK = "<!-- scenario:{name} -->"


def render(result: dict[str, Any], command: str) -> str:
    """The markdown block of one scenario's measured figures."""
    name = result["scenario"]
    m = result["machine"]
    lines = [
        MARK.format(name=name),
        f"### {name} (measured {result['date']})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GiB; "
        f"bundle `{result['bundle']}`; wall {result['wall_s']} s.",
        "",
        "```json",
        json.dumps({k: v for k, v in result.items() if k not in ("machine", "rss_mb")}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def update_doc(result: dict[str, Any], command: str, doc: Path = DOC) -> None:
    """Replace (or add) this scenario's block in docs/reliability.md, leaving the rest as written."""
    text = doc.read_text() if doc.exists() else "# Reliability\n"
    block = render(result, command)
    mark = MARK.format(name=result["scenario"])
    if mark in text:
        head, rest = text.split(mark, 1)
        nxt = rest.find("<!-- scenario:")
        text = head + block + ("\n" + rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.write_text(text)


def bench_reliability_cmd(
    scenario: str,
    bundle: Path = Path("artifacts/demo/bundle"),
    json_out: Path | None = None,
    rate: float = 0.0,
    duration: float = 0.0,
    update_docs: bool = True,
) -> dict[str, Any]:
    """Run one scenario; print a summary line, optionally write JSON and update docs/reliability.md."""
    import sys

    kw: dict[str, Any] = {}
    if rate:
        kw["rate"] = rate
    if duration:
        kw["duration_s"] = duration
    result = run_scenario(scenario, bundle, lambda msg: print(msg, file=sys.stderr), **kw)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    if update_docs:
        update_doc(result, "utpm bench reliability " + " ".join(sys.argv[3:]))
    return result
