"""`utpm bench loop`: event-loop CPU per cache hit, in process, without HTTP.

The app is called as an ASGI callable on one uvloop, by `concurrency` coroutines at once, and
`time.thread_time()` of the loop's thread is divided by the requests served: what one
`GET /profile/{user}` hit costs the event loop in the app itself (routing, validation, the
middleware, the cache, the response), with the HTTP server and the load generator out of the
picture. The same for the ceiling app (`ceiling.py`) gives the framework's own share. Cheap and
steady enough to compare two commits of the hot path; `utpm bench serve` is the end-to-end figure.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from loadtest.procs import Redis
from service.cache import TtlLru

ASGIApp = Callable[..., Any]
# the arms that measure the service as it ships (the others are its "before" arms and variants)
DEFAULT_GET = "service, Redis + near cache (default)"
DEFAULT_POST = "POST /profile (default: plain ASGI route, full second batch)"


def http_scope(
    method: str, path: str, query: bytes = b"", body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """The ASGI scope of one JSON request from 127.0.0.1 (`headers` added to its own)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }


async def call(app: ASGIApp, method: str, path: str, query: bytes = b"", body: bytes = b"") -> tuple[int, bytes]:
    """One request through the ASGI app: (status, body)."""
    scope = http_scope(method, path, query, body)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    status, chunks = 0, []

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


class LibraryTtlLru(TtlLru):
    """TtlLru's interface on cachetools.TLRUCache: the library the near cache's own store is measured against."""

    def __init__(self, max_entries: int) -> None:
        import cachetools

        self.max_entries = max_entries
        # a value is (ttl_s, bytes): the TTL is per entry, as the near cache gives it
        self._lib: Any = cachetools.TLRUCache(max_entries, ttu=lambda _k, v, now: now + v[0], timer=time.monotonic)

    def get(self, key: str) -> bytes | None:
        hit = self._lib.get(key)
        return None if hit is None else hit[1]

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._lib[key] = (ttl_s, value)

    def pop(self, key: str) -> bool:
        return self._lib.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._lib)

    def clear(self) -> None:
        self._lib.clear()


async def _measure(
    app: Any, users: int, requests: int, concurrency: int, rounds: int, library_near_store: bool = False
) -> dict[str, float]:
    async with app.router.lifespan_context(app):
        if library_near_store:
            near = app.state.service.cache
            near.store = LibraryTtlLru(near.store.max_entries)
        for i in range(users):
            status, text = await call(app, "POST", "/profile", body=orjson.dumps({"user_id": f"u{i}", "features": {}}))
            if status != 200:
                raise RuntimeError(f"POST /profile answered {status}: {text[:200]!r}")

        async def reader(worker: int, n: int) -> None:
            for j in range(n):
                status, text = await call(app, "GET", f"/profile/u{(worker + j) % users}", b"k=50")
                if status != 200:
                    raise RuntimeError(f"GET /profile answered {status}: {text[:200]!r}")

        per = max(1, requests // concurrency)
        await asyncio.gather(*(reader(w, max(1, per // 4)) for w in range(concurrency)))  # warm-up
        cpu, rate = [], []
        for _ in range(rounds):
            c0, t0 = time.thread_time(), time.perf_counter()
            await asyncio.gather(*(reader(w, per) for w in range(concurrency)))
            c1, t1 = time.thread_time(), time.perf_counter()
            cpu.append(1e6 * (c1 - c0) / (per * concurrency))
            rate.append(per * concurrency / (t1 - t0))
        if library_near_store and not len(app.state.service.cache.store):
            raise RuntimeError("the library's store held no profile: the arm did not measure it")
    return {"loop_us_per_request": round(statistics.median(cpu), 1), "requests_per_s": round(statistics.median(rate))}


async def _post_ab(
    bundle: Path, url: str, requests: int, concurrency: int, rounds: int, payloads: Path | None = None
) -> dict[str, Any]:
    """Loop CPU, requests/s and mean batch size per POST /profile from `concurrency` senders (the
    bundle's engine computing in its threads; CPU of the loop thread only), three arms alternated
    round by round in one app: the default, POST through FastAPI's APIRoute (before the plain
    route), and the batcher's policy before a second batch had to start full."""
    from loadtest.payloads import PayloadSource
    from service.config import Settings
    from service.main import create_app
    from service.routes.profile import PostProfileRoute

    source = PayloadSource.open(bundle, payloads)
    rng = random.Random(0)
    bodies = [orjson.dumps(source.body(rng, f"loop-post-{i}", 50)) for i in range(256)]
    app = create_app(Settings(bundle=bundle, redis_url=url, log_level="WARNING"))
    fast = list(app.router.routes)
    before = [r for r in fast if not isinstance(r, PostProfileRoute)]
    per = max(1, requests // concurrency)
    arms = {
        DEFAULT_POST: (fast, True),
        "POST /profile through FastAPI's APIRoute (before)": (before, True),
        "POST /profile, batching before (a second batch starts at once)": (fast, False),
    }
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    rate: dict[str, list[float]] = {name: [] for name in arms}
    batch: dict[str, list[float]] = {name: [] for name in arms}
    sizes: list[int] = []

    async def sender(worker: int, n: int) -> None:
        for j in range(n):
            status, text = await call(app, "POST", "/profile", body=bodies[(worker * 17 + j) % len(bodies)])
            if status != 200:
                raise RuntimeError(f"POST /profile answered {status}: {text[:200]!r}")

    async with app.router.lifespan_context(app):
        batcher = app.state.service.engine.batcher
        record = batcher.on_batch

        def on_batch(n: int) -> None:
            sizes.append(n)
            if record is not None:
                record(n)

        batcher.on_batch = on_batch
        await asyncio.gather(*(sender(w, max(1, per // 4)) for w in range(concurrency)))  # warm-up
        for rnd in range(rounds):
            for name in arms if rnd % 2 == 0 else reversed(list(arms)):
                app.router.routes, batcher.full_second_batch = arms[name]
                sizes.clear()
                c0, t0 = time.thread_time(), time.perf_counter()
                await asyncio.gather(*(sender(w, per) for w in range(concurrency)))
                c1, t1 = time.thread_time(), time.perf_counter()
                cpu[name].append(1e6 * (c1 - c0) / (per * concurrency))
                rate[name].append(per * concurrency / (t1 - t0))
                batch[name].append(sum(sizes) / max(1, len(sizes)))
    return {
        name: {
            "loop_us_per_request": round(statistics.median(cpu[name]), 1),
            "requests_per_s": round(statistics.median(rate[name]), 1),
            "mean_batch": round(statistics.median(batch[name]), 2),
            "rounds_us": [round(v, 1) for v in cpu[name]],
            "rounds_rps": [round(v, 1) for v in rate[name]],
        }
        for name in arms
    }


def run_post_ab(
    bundle: Path, requests: int = 2000, concurrency: int = 16, rounds: int = 3, payloads: Path | None = None
) -> dict[str, Any]:
    """Only the POST A/B (`utpm bench loop --post-only`: one load of a large bundle)."""
    import uvloop

    with Redis() as redis:
        post = uvloop.run(_post_ab(bundle, redis.url, requests, concurrency, rounds, payloads))
    return {
        "kind": "loop",
        "bundle": str(bundle),
        "requests": requests,
        "concurrency": concurrency,
        "rounds": rounds,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "post": post,
    }


def run_loop_bench(
    bundle: Path, requests: int = 20_000, concurrency: int = 16, rounds: int = 3, users: int = 16
) -> dict[str, Any]:
    """Loop CPU per GET hit: the service with Redis, with Redis behind the near cache, in memory; the ceiling;
    and per POST, the plain route vs FastAPI's (`post`)."""
    import uvloop

    from service.config import Settings
    from service.main import create_app
    from service.routes.profile import GetProfileRoute

    results: dict[str, Any] = {}
    with Redis() as redis:
        url = redis.url
        variants: dict[str, dict[str, Any]] = {
            "service, Redis (near cache off)": {"redis_url": url, "near_cache_ttl_ms": 0},
            DEFAULT_GET: {"redis_url": url},
            # the A/B of the Starlette route for GET hits: the same app answering through FastAPI's APIRoute
            "service, Redis + near cache, GET through FastAPI's APIRoute (before)": {
                "redis_url": url,
                "apiroute": True,
            },
            # the near cache's own store against the library it is measured against
            "service, Redis + near cache on cachetools.TLRUCache": {"redis_url": url, "library_near_store": True},
            "service, in-process cache (no Redis)": {"redis_url": None},
        }
        for name, given in variants.items():
            kw = dict(given)
            apiroute = kw.pop("apiroute", False)
            library = kw.pop("library_near_store", False)
            app = create_app(Settings(bundle=bundle, log_level="WARNING", **kw))
            if apiroute:
                app.router.routes = [r for r in app.router.routes if not isinstance(r, GetProfileRoute)]
            results[name] = uvloop.run(_measure(app, users, requests, concurrency, rounds, library))
        results["post"] = uvloop.run(_post_ab(bundle, url, max(64, requests // 20), concurrency, rounds))
    os.environ["UTPM_BUNDLE"] = str(bundle)
    from loadtest.ceiling import create_app as create_ceiling

    results["ceiling (empty FastAPI endpoint)"] = uvloop.run(
        _measure(create_ceiling(), users, requests, concurrency, rounds)
    )
    return {
        "kind": "loop",
        "bundle": str(bundle),
        "requests": requests,
        "concurrency": concurrency,
        "rounds": rounds,
        "load_average_1m": round(os.getloadavg()[0], 2),
        **results,
    }
