"""`utpm bench ab`: what the A/B routing costs a cache hit, side by side, in process (as `bench loop`).

One app on one uvloop with Redis, its profiles cached, is asked for the same users by two routes
alternated round by round (A B A B ...), so that machine noise hits both alike:

- `before`: the GET handler as it was before A/B existed (read the champion's cached profile,
  answer it), added to the profile routes' router for this measurement only;
- `no challenger`: today's `GET /profile/{user}` (assign an arm, label the response);
- `challenger at 0.5`: the same route after a challenger is loaded for half of the users
  (alternated with `before` again).

The figure is the event loop's CPU time per request (`time.thread_time()` of the loop's thread /
requests), the median over rounds. `utpm bench report` renders the JSON into docs/serving.md.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Path as PathParam
from fastapi import Query, Request

from loadtest.loop import call
from loadtest.procs import Redis
from service.profiles import read_profile
from service.responses import RenderedJSON
from service.routes import profile as profile_routes
from service.state import service_state

BEFORE_PATH = "/bench/before/{user_id}"


async def before(
    request: Request,
    user_id: Annotated[str, PathParam(min_length=1, max_length=256)],
    k: Annotated[int | None, Query(ge=1)] = None,
) -> RenderedJSON:
    """`GET /profile/{user_id}` as it was before A/B (no arm, no label), for the side-by-side only."""
    state = service_state(request)
    if not state.auth.reads_open:
        state.auth.check(request, "read")
    return RenderedJSON(await read_profile(state, user_id, k))


async def _measure(
    app: Any, challenger: Path, users: int, per: int, concurrency: int, rounds: int
) -> dict[str, list[float]]:
    cpu: dict[str, list[float]] = {"before": [], "no challenger": [], "challenger at 0.5": []}
    async with app.router.lifespan_context(app):
        for i in range(users):
            status, text = await call(app, "POST", "/profile", body=orjson.dumps({"user_id": f"u{i}", "features": {}}))
            if status != 200:
                raise RuntimeError(f"POST /profile answered {status}: {text[:200]!r}")

        async def reader(prefix: str, worker: int, n: int) -> None:
            for j in range(n):
                status, text = await call(app, "GET", f"{prefix}u{(worker + j) % users}", b"k=50")
                if status != 200:
                    raise RuntimeError(f"GET {prefix} answered {status}: {text[:200]!r}")

        async def one(prefix: str) -> float:
            c0 = time.thread_time()
            await asyncio.gather(*(reader(prefix, w, per) for w in range(concurrency)))
            return 1e6 * (time.thread_time() - c0) / (per * concurrency)

        await one("/profile/")  # warm-up
        await one("/bench/before/")
        for _ in range(rounds):
            cpu["before"].append(await one("/bench/before/"))
            cpu["no challenger"].append(await one("/profile/"))
        # the challenger: load it, compute its arm's profiles, then the same alternation
        state = app.state.service
        from service.ab import Experiment
        from service.engine import ProfileEngine

        engine = await asyncio.to_thread(ProfileEngine.load, challenger, state.settings)
        engine.start()
        state.experiment = Experiment(engine, 0.5)
        for i in range(users):
            await call(app, "POST", "/profile", body=orjson.dumps({"user_id": f"u{i}", "features": {}}))
        await one("/profile/")
        for _ in range(rounds):
            cpu["before"].append(await one("/bench/before/"))
            cpu["challenger at 0.5"].append(await one("/profile/"))
        state.experiment = Experiment()
        await engine.retire()
    return {name: [round(v, 1) for v in values] for name, values in cpu.items()}


def run_ab_bench(
    champion: Path, challenger: Path, requests: int = 20_000, concurrency: int = 16, rounds: int = 5, users: int = 64
) -> dict[str, Any]:
    """Loop CPU per GET hit (us): before A/B, no challenger, challenger at 0.5 (Redis, default settings)."""
    import uvloop

    from service.config import Settings
    from service.main import create_app

    per = max(1, requests // concurrency // rounds)
    # Routed as the real one is: in the profile routes' router, right after GET /profile/{user_id},
    # so it pays one failed route match more than today's handler (the comparison is against it).
    if not any(getattr(r, "path", "") == BEFORE_PATH for r in profile_routes.router.routes):
        profile_routes.router.add_api_route(BEFORE_PATH, before, methods=["GET"])
    with Redis() as redis:
        settings = Settings(bundle=champion, bundle_root=challenger.parent, redis_url=redis.url, log_level="WARNING")
        app = create_app(settings)
        rounds_us = uvloop.run(_measure(app, challenger, users, per, concurrency, rounds))
    return {
        "kind": "ab",
        "champion": str(champion),
        "challenger": str(challenger),
        "requests_per_round": per * concurrency,
        "rounds": rounds,
        "loop_us_per_get_hit": {name: round(statistics.median(v), 1) for name, v in rounds_us.items()},
        "rounds_us": rounds_us,
        "load_average": round(os.getloadavg()[0], 1),
    }
