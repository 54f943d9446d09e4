"""A circuit breaker for the Redis round trips (docs/serving.md, "Behaviour under faults").

closed: calls go through; BREAKER_FAILURES failed round trips in a row open it.
open: calls fail at once (no socket touched) until the backoff has passed.
half_open: one call goes through as the probe; its success closes the breaker, its failure opens
it again with the backoff doubled (up to BREAKER_BACKOFF_MAX_S).

Why not a library: purgatory (async, maintained) lets every concurrent call through while half
open, so each probe of a black-holed Redis would hold every in-flight request for the full
timeout; it also has a fixed TTL, wall-clock time and a message-bus dispatch per call. aiobreaker
is unmaintained since 2021 and pybreaker's async path needs tornado. This one is a few
comparisons per Redis round trip (not per request: reads of one loop turn share a round trip).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Five round trips in a row: a single lost packet or one slow reply must not open it.
BREAKER_FAILURES = 5
# First probe after 0.5 s: a restarted Redis is back in service within a second.
BREAKER_BACKOFF_S = 0.5
# Probes at most every 4 s: each probe of a dead Redis costs one request one timeout.
BREAKER_BACKOFF_MAX_S = 4.0

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failures: int = BREAKER_FAILURES,
        backoff_s: float = BREAKER_BACKOFF_S,
        backoff_max_s: float = BREAKER_BACKOFF_MAX_S,
        on_state: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures
        self.first_backoff = backoff_s
        self.backoff_max = backoff_max_s
        self.on_state = on_state
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.backoff = backoff_s
        self.probe_at = 0.0

    def allow(self) -> bool:
        """May a call go through now? In half_open only the one probe may."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() >= self.probe_at:
            self._set(HALF_OPEN)
            return True
        return False

    def retry_after_s(self) -> int:
        """Whole seconds until the next probe (at least 1)."""
        return max(1, math.ceil(self.probe_at - self.clock()))

    def success(self) -> None:
        self.failures = 0
        if self.state != CLOSED:
            self.backoff = self.first_backoff
            self._set(CLOSED)

    def failure(self) -> None:
        if self.state == HALF_OPEN:
            self.backoff = min(self.backoff * 2, self.backoff_max)
            self._open()
            return
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.failures_to_open:
            self._open()

    def _open(self) -> None:
        self.probe_at = self.clock() + self.backoff
        self._set(OPEN)

    def _set(self, state: str) -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(state)
