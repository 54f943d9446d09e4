"""The circuit breaker's state machine on its own, on a clock the test moves."""

from __future__ import annotations

from service.breaker import BREAKER_BACKOFF_MAX_S, BREAKER_BACKOFF_S, BREAKER_FAILURES, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    states: list[str] = []
    b = CircuitBreaker(on_state=states.append, clock=Clock())
    for _ in range(BREAKER_FAILURES - 1):
        b.failure()
    b.success()  # a success in between resets the count
    for _ in range(BREAKER_FAILURES - 1):
        b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow() and states == ["open"]


def test_one_probe_after_the_backoff_then_closed_or_open_with_the_backoff_doubled() -> None:
    clock = Clock()
    b = CircuitBreaker(clock=clock)
    for _ in range(BREAKER_FAILURES):
        b.failure()
    assert b.retry_after_s() == 1 and not b.allow()
    clock.now += BREAKER_BACKOFF_S
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # only one probe while half open
    b.failure()  # the probe failed
    assert b.state == "open" and b.backoff == 2 * BREAKER_BACKOFF_S
    for _ in range(10):  # the wait doubles up to its cap
        clock.now += b.backoff
        assert b.allow()
        b.failure()
    assert b.backoff == BREAKER_BACKOFF_MAX_S and b.retry_after_s() == int(BREAKER_BACKOFF_MAX_S)
    clock.now += b.backoff
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.backoff == BREAKER_BACKOFF_S and b.allow() and b.allow()
