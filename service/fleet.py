"""One admin call, every replica: the served arms as a desired state in Redis that every replica
sharing it follows (`UTPM_FLEET_SYNC`, on by default with Redis).

An admin call (`/admin/reload`, `/admin/challenger...`) changes the replica that receives it, then
writes the whole state, the champion's and the challenger's bundle (path under the bundle root and
content version) and the share, under a new sequence number. Every replica reads it every
`POLL_S` and, when the state is not the last it applied, brings its arms to that state with
the functions the admin routes use (`service.arms`), checking that each bundle it loads is the
version named. A replica starting with the same `UTPM_BUNDLE` and `UTPM_AB_CHALLENGER_BUNDLE` as
the replica that wrote the state applies it before it serves; one configured otherwise (a
deployment that changed them) starts from its own settings and follows the next admin call. A
bundle a replica cannot load leaves it serving what it had; `/readyz` ("fleet") and the log say
why, and it tries again after `RETRY_S`. Two admin calls at once on two replicas: the last write
wins, and every replica follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import orjson

from service import arms
from service.cache import breaker_of
from service.errors import ReloadRefused, ServiceError
from service.stale import redis_client_of
from service.state import ServiceState

log = logging.getLogger("utpm.service")

KEY = "utpm:fleet:arms:v1"
SEQ_KEY = "utpm:fleet:seq:v1"
# How often a replica reads the state: an admin call reaches the fleet within this (plus a bundle load).
POLL_S = 1.0
# A state a replica could not apply is tried again after this: a bundle load is not free.
RETRY_S = 30.0


def _origin(state: ServiceState) -> dict[str, str | None]:
    s = state.settings
    return {"bundle": str(s.bundle), "challenger": str(s.ab_challenger_bundle) if s.ab_challenger_bundle else None}


class Fleet:
    """This replica's side of the shared state: publish after an admin call, follow the others'."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.client: Any = redis_client_of(state.cache)
        self.applied: int | None = None  # the sequence number this replica's arms match
        self._applied_id: str | None = None  # and the state's own id: numbering restarts with an emptied Redis
        self.error: str | None = None  # why the last state could not be applied
        self._failed_id: str | None = None  # the state that could not be applied, tried again after RETRY_S
        self._failed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, object]:
        return {"sync": True, "applied": self.applied, "error": self.error}

    async def publish(self) -> int | None:
        """Write this replica's arms as the fleet's state; its sequence number (None: Redis could not
        be written, which leaves the change on this replica only, and says so in the log)."""
        state = self.state
        challenger = state.experiment.challenger
        desired = {
            "champion": {"bundle": arms.bundle_name(state, state.engine), "version": state.engine.version},
            "challenger": None
            if challenger is None
            else {"bundle": arms.bundle_name(state, challenger), "version": challenger.version},
            "share": state.experiment.share if challenger is not None else 0.0,
            "origin": _origin(state),
        }
        from redis.exceptions import RedisError

        try:
            seq = int(await self.client.incr(SEQ_KEY))
            state_id = uuid.uuid4().hex
            await self.client.set(KEY, orjson.dumps({"seq": seq, "id": state_id, **desired}))
        except (RedisError, OSError, TimeoutError) as e:  # the change stays local, said loudly
            log.warning("fleet: the admin change was applied here only; the shared state could not be written: %s", e)
            return None
        self.applied, self._applied_id, self.error = seq, state_id, None
        self.state.metrics.fleet_in_sync.set(1)
        return seq

    async def follow_once(self, starting: bool = False) -> None:
        """Read the state and apply it if it is new to this replica."""
        from redis.exceptions import RedisError

        breaker = breaker_of(self.state.cache)
        if breaker is not None and breaker.state == "open":  # Redis known down: no timeout to wait for
            return
        before = self._applied_id
        try:
            raw = await self.client.get(KEY)
        except (RedisError, OSError, TimeoutError) as e:  # Redis down: the cache's health says so
            log.debug("fleet: state not read: %s", e)
            return
        if raw is None:
            return
        try:
            desired = orjson.loads(raw)
            seq, state_id = int(desired["seq"]), str(desired["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            self.error = f"unreadable fleet state under {KEY}: {e}"
            return
        if state_id == self._applied_id:
            return
        if starting and desired.get("origin") != _origin(self.state):
            log.info("fleet: state %d was written by replicas configured otherwise; starting from the settings", seq)
            self.applied, self._applied_id = seq, state_id
            return
        if state_id == self._failed_id and time.monotonic() - self._failed_at < RETRY_S:
            return
        try:
            async with arms.lock:
                if self._applied_id != before:  # an admin call here published a newer state meanwhile
                    return
                await self._apply(desired)
        except Exception as e:  # whatever it was, this replica keeps serving what it had
            self.error, self._failed_id, self._failed_at = f"state {seq}: {e}", state_id, time.monotonic()
            self.state.metrics.fleet_applies.labels("failed").inc()
            self.state.metrics.fleet_in_sync.set(0)
            if isinstance(e, ReloadRefused | ServiceError):
                log.warning("fleet: could not apply state %d; serving what it had: %s", seq, e)
            else:
                log.exception("fleet: could not apply state %d; serving what it had", seq)
            return
        self.applied, self._applied_id, self.error = seq, state_id, None
        self.state.metrics.fleet_applies.labels("ok").inc()
        self.state.metrics.fleet_in_sync.set(1)
        log.info("fleet: applied state %d", seq)

    async def _apply(self, desired: dict[str, Any]) -> None:
        state = self.state
        champion, challenger = desired["champion"], desired["challenger"]
        if state.engine.version != champion["version"]:
            current = state.experiment.challenger
            if current is not None and current.version == champion["version"]:
                await arms.promote(state)
            else:
                await arms.reload(state, champion["bundle"], champion["version"])
        current = state.experiment.challenger
        if challenger is None:
            if current is not None:
                arms.drop(state)
        elif current is None or current.version != challenger["version"]:
            await arms.load_challenger(state, challenger["bundle"], float(desired["share"]), challenger["version"])
        elif state.experiment.share != float(desired["share"]):
            arms.set_share(state, float(desired["share"]))
        if state.feedback is not None:
            state.feedback.show_arms(state.experiment.describe(state.engine))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.follow_once()
            except Exception:  # a bug must not end the follower for the life of the process
                log.exception("fleet: following failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
