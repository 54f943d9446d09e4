"""Locust scenarios for the profile service.

    locust -f loadtest/ --host http://127.0.0.1:8000                      # web UI, all three users
    locust -f loadtest/ --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 30s ComputeUser

Users (pick some by class name on the command line; by default all three run, equally weighted):

- `ComputeUser`: `POST /profile` for a new user id each time (profile computation).
- `CachedReadUser`: profiles `--read-users` users once when it starts (reported as
  `POST /profile [setup]`), then reads them with `GET /profile/{user}`: cache hits.
- `MixedUser`: one computation for every four reads of users it profiled before.

Every response body is checked (`_checks.profile_problem`): a 200 with a wrong answer (wrong
number of tags, unsorted scores, another user's id, no model version, wrong `cached` flag) counts
as a failure. Request bodies come from `--payloads` (JSON lines) if given, else are sampled from
the vocabularies of `--bundle` with the training frequencies (`_payloads.PayloadSource`).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

try:
    from loadtest._checks import profile_problem
    from loadtest._payloads import PayloadSource
except ModuleNotFoundError:  # locust started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtest._checks import profile_problem
    from loadtest._payloads import PayloadSource

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
        "--read-users",
        type=int,
        default=20,
        env_var="UTPM_LT_READ_USERS",
        help="Users each CachedReadUser profiles before reading them (default: 20).",
    )
    group.add_argument(
        "--payload-seed", type=int, default=None, env_var="UTPM_LT_SEED", help="Seed of the payload draws."
    )


@events.init.add_listener
def _load_payloads(environment: Any, **_kw: Any) -> None:
    opts = environment.parsed_options
    bundle = getattr(opts, "bundle", DEFAULT_BUNDLE)
    payloads = getattr(opts, "payloads", "")
    _Config.k = int(getattr(opts, "k", 10))
    _Config.read_users = int(getattr(opts, "read_users", 20))
    _Config.seed = getattr(opts, "payload_seed", None)
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

    def new_user_id(self) -> str:
        return f"{self.prefix}-{next(self.counter)}"

    def compute(self, user_id: str, name: str = COMPUTE_NAME) -> bool:
        """POST /profile for `user_id`; True if the answer was right."""
        body = self.source.body(self.rng, user_id, _Config.k)
        with self.client.post("/profile", json=body, name=name, catch_response=True) as resp:
            ok = self._check(resp, user_id, cached=False)
        if ok:
            self.profiled.append(user_id)
        return ok

    def read(self, user_id: str) -> bool:
        """GET /profile/{user_id}: a cache hit is expected."""
        with self.client.get(f"/profile/{user_id}?k={_Config.k}", name=READ_NAME, catch_response=True) as resp:
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
