"""Locust scenarios for the profile service.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --class-picker     # web UI
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 30s ComputeUser

Users (name the ones to run on the command line, or pick them in the web UI; unnamed, all run):

- `ComputeUser`: `POST /profile` for a new user id each time (profile computation).
- `CachedReadUser`: profiles `--read-users` users once when it starts (reported as
  `POST /profile [setup]`), then reads them with `GET /profile/{user}`: cache hits.
- `MixedUser`: one computation for every four reads of users it profiled before.
- `OpenLoopUser` (`--rate R --run-seconds S --outcomes FILE`): open loop, each
  of the -u users on its own fixed timeline of sends, R/u per second (wrk2's model). Latency
  counts from when a request was due, not from when it went out, so a slow answer that delays the
  next send is not hidden (coordinated omission corrected). Every request's outcome is written to
  FILE as a JSON line (and the epoch of the first due sends to FILE.start as soon as it is
  chosen, for a caller timing faults); locust's own figures for it are not used.

Every response body is checked (`checks.profile_problem`): a 200 with a wrong answer (wrong
number of tags, unsorted scores, another user's id, no model version, wrong `cached` flag) counts
as a failure. Request bodies come from `--payloads` (JSON lines) if given, else are sampled from
the vocabularies of `--bundle` with the training frequencies (`payloads.PayloadSource`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

try:
    from loadtest.checks import profile_problem
    from loadtest.payloads import PayloadSource
except ModuleNotFoundError:  # locust started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtest.checks import profile_problem
    from loadtest.payloads import PayloadSource

log = logging.getLogger("utpm.loadtest")

DEFAULT_BUNDLE = "artifacts/demo/bundle"
COMPUTE_NAME = "POST /profile"
SETUP_NAME = "POST /profile [setup]"
READ_NAME = "GET /profile/[user]"


class _Config:
    """What every simulated user shares: the payload source and the command-line options."""

    source: PayloadSource | None = None
    k: int = 10
    read_users: int = 20
    seed: int | None = None
    opts: Any = None
    outcomes: list[dict[str, Any]] = []  # noqa: RUF012 - OpenLoopUser's, written on quit
    finished = 0
    start = 0.0  # epoch of OpenLoopUser's first due sends


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("utpm profile service")
    group.add_argument(
        "--bundle",
        default=DEFAULT_BUNDLE,
        env_var="UTPM_LT_BUNDLE",
        help="Bundle whose vocabularies request features are sampled from (default: %(default)s).",
    )
    group.add_argument(
        "--payloads",
        default="",
        env_var="UTPM_LT_PAYLOADS",
        help="JSON-lines file of request bodies (a 'features' object per line); used instead of --bundle.",
    )
    group.add_argument("--k", type=int, default=10, env_var="UTPM_LT_K", help="Tags per profile (default: 10).")
    group.add_argument(
        "--api-key", default="", env_var="UTPM_LT_API_KEY", help="Sent as X-API-Key (a service with write keys)."
    )
    group.add_argument(
        "--read-users",
        type=int,
        default=20,
        env_var="UTPM_LT_READ_USERS",
        help="Users each CachedReadUser profiles before reading them (default: 20).",
    )
    group.add_argument(
        "--payload-seed", type=int, default=None, env_var="UTPM_LT_SEED", help="Seed of the payload draws."
    )
    group.add_argument("--rate", type=float, default=10.0, help="OpenLoopUser: requests/s over all users.")
    group.add_argument("--get-share", type=float, default=0.0, help="OpenLoopUser: share of GETs of users it posted.")
    group.add_argument("--run-seconds", type=float, default=30.0, help="OpenLoopUser: seconds of sends.")
    group.add_argument("--outcomes", default="", help="OpenLoopUser: write every request's outcome here (JSONL).")


@events.init.add_listener
def _load_payloads(environment: Any, **_kw: Any) -> None:
    opts = environment.parsed_options
    bundle = getattr(opts, "bundle", DEFAULT_BUNDLE)
    payloads = getattr(opts, "payloads", "")
    _Config.k = int(getattr(opts, "k", 10))
    _Config.read_users = int(getattr(opts, "read_users", 20))
    _Config.seed = getattr(opts, "payload_seed", None)
    _Config.opts = opts
    if _Config.k < 1 or _Config.read_users < 1:
        sys.exit("error: --k and --read-users must be >= 1")
    try:
        _Config.source = PayloadSource.open(bundle, payloads)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(
            f"error: cannot prepare request bodies: {e}\n"
            "  give --payloads FILE.jsonl, or --bundle DIR with a bundle's encoder/ (`make demo` builds one)"
        )
    log.info("request bodies: %s; k=%d", _Config.source.describe(), _Config.k)


class ProfileUser(FastHttpUser):
    """Shared behaviour: body generation, the two requests, and the response checks."""

    abstract = True
    wait_time = constant(0)  # closed loop: each simulated user sends its next request at once

    def on_start(self) -> None:
        if _Config.source is None:  # used as a library without the init event
            _Config.source = PayloadSource.open(os.environ.get("UTPM_LT_BUNDLE", DEFAULT_BUNDLE), None)
        self.source: PayloadSource = _Config.source
        seed = None if _Config.seed is None else _Config.seed * 1_000_003 + id(self)
        self.rng = random.Random(seed)
        self.prefix = f"lt-{uuid.uuid4().hex[:10]}"
        self.counter = itertools.count()
        self.profiled: list[str] = []
        key = getattr(_Config.opts, "api_key", "")
        self.headers = {"x-api-key": key} if key else None

    def new_user_id(self) -> str:
        return f"{self.prefix}-{next(self.counter)}"

    def compute(self, user_id: str, name: str = COMPUTE_NAME) -> bool:
        """POST /profile for `user_id`; True if the answer was right."""
        body = self.source.body(self.rng, user_id, _Config.k)
        with self.client.post("/profile", json=body, name=name, headers=self.headers, catch_response=True) as resp:
            ok = self._check(resp, user_id, cached=False)
        if ok:
            self.profiled.append(user_id)
        return ok

    def read(self, user_id: str) -> bool:
        """GET /profile/{user_id}: a cache hit is expected."""
        path = f"/profile/{user_id}?k={_Config.k}"
        with self.client.get(path, name=READ_NAME, headers=self.headers, catch_response=True) as resp:
            return self._check(resp, user_id, cached=True)

    def _check(self, resp: Any, user_id: str, cached: bool) -> bool:
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            return False
        try:
            body = resp.json()
        except ValueError:
            resp.failure("response is not JSON")
            return False
        problem = profile_problem(body, user_id=user_id, k=_Config.k, cached=cached)
        if problem is not None:
            resp.failure(problem)
            return False
        resp.success()
        return True


class ComputeUser(ProfileUser):
    """Profile computation: every request is a new user, so nothing can come from the cache."""

    @task
    def profile(self) -> None:
        self.compute(self.new_user_id())


class CachedReadUser(ProfileUser):
    """Cached reads: users profiled once at start, then read back."""

    def on_start(self) -> None:
        super().on_start()
        for _ in range(_Config.read_users):
            self.compute(self.new_user_id(), name=SETUP_NAME)

    @task
    def read_profile(self) -> None:
        if not self.profiled:  # every setup request failed; keep trying to profile someone
            self.compute(self.new_user_id(), name=SETUP_NAME)
            return
        self.read(self.rng.choice(self.profiled))


class MixedUser(ProfileUser):
    """One computation for every four cached reads."""

    @task(1)
    def profile(self) -> None:
        self.compute(self.new_user_id())

    @task(4)
    def read_profile(self) -> None:
        if not self.profiled:
            self.compute(self.new_user_id())
            return
        self.read(self.rng.choice(self.profiled))


class OpenLoopUser(ProfileUser):
    """Open loop with coordinated omission corrected (module docstring); outcomes to --outcomes."""

    network_timeout = connection_timeout = 10.0

    def on_start(self) -> None:
        super().on_start()
        o = _Config.opts
        self.interval = max(1, int(o.num_users)) / o.rate
        self.end = _Config.start + o.run_seconds
        self.due = _Config.start + self.rng.random() * self.interval  # users' timelines interleave
        gevent.sleep(max(0.0, self.due - time.time()))

    def wait_time(self) -> float:
        self.due += self.interval
        return max(0.0, self.due - time.time())

    @task
    def send(self) -> None:
        if self.due >= self.end:
            _Config.finished += 1
            if _Config.finished == int(_Config.opts.num_users):  # the last one stops the run
                gevent.spawn(self.environment.runner.quit)
            raise StopUser
        get = bool(self.profiled) and self.rng.random() < _Config.opts.get_share
        user_id = self.rng.choice(self.profiled) if get else self.new_user_id()
        sent = time.time()
        if get:
            path = f"/profile/{user_id}?k={_Config.k}"
            ctx = self.client.get(path, name=READ_NAME, headers=self.headers, catch_response=True)
        else:
            body = self.source.body(self.rng, user_id, _Config.k)
            ctx = self.client.post("/profile", json=body, name=COMPUTE_NAME, headers=self.headers, catch_response=True)
        with ctx as resp:
            status, problem, stale = int(resp.status_code or 0), None, False
            try:
                answer = resp.json() if status == 200 else None
                problem = profile_problem(answer, user_id=user_id, k=_Config.k, cached=get) if answer else None
                stale = bool(answer and answer.get("stale"))  # another model version's profile, marked as such
            except ValueError:
                problem = "response is not JSON"
            if status == 0:
                problem = f"transport error: {resp.error}"
            resp.success()  # judged from the outcomes, not by locust
        if status == 200 and problem is None and not get:
            self.profiled.append(user_id)
        done = time.time()
        _Config.outcomes.append(
            {
                "t": round(self.due, 4),
                "kind": "get" if get else "post",
                "status": status,
                "latency_ms": round(1000 * (done - self.due), 3),
                "late_ms": round(1000 * (sent - self.due), 3),
                "problem": problem,
                "stale": stale,
            }
        )


@events.test_start.add_listener
def _schedule(environment: Any, **_kw: Any) -> None:
    _Config.start = time.time() + 1.0  # a second to spawn every user
    path = getattr(environment.parsed_options, "outcomes", "")
    if path:
        Path(f"{path}.tmp").write_text(repr(_Config.start))
        os.replace(f"{path}.tmp", f"{path}.start")  # whole, for the caller polling for it


@events.quitting.add_listener
def _write_outcomes(environment: Any, **_kw: Any) -> None:
    path = getattr(environment.parsed_options, "outcomes", "")
    if path:
        Path(path).write_text("".join(json.dumps(o) + "\n" for o in _Config.outcomes))
