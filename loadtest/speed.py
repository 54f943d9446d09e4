"""How fast this machine's cores are right now: a fixed piece of Python, timed again and again.

A shared VM's cores do not run at one speed: the same work can take half as long one second as the
next, each core on its own, while the guest sees no steal time (docs/performance.md, "Method"). A
throughput measured in one minute and a roofline measured in the next then differ by the machine as
much as by the code. So every load run and every roofline row carries the CPU probe's figures from
while it ran (`SpeedSampler`), and `utpm bench speed` shows the machine's spread on its own.

The probe runs in a process of its own (no shared interpreter lock with the harness or an in-process
engine) and is timed by CPU time, so waiting for a busy core does not count: only how fast the core
ran the work while it had it. It costs about 1% of one core (PROBE_LOOPS every INTERVAL_S).

`python -m loadtest.speed --interval S [--pin]` is the sampler's child: one "CPU ms" line per probe,
the first at once, the others when SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

PROBE_LOOPS = 20_000  # about 1-2 ms of one core
INTERVAL_S = 0.1


def _work(n: int) -> int:
    x = 0
    for i in range(n):
        x += i & 7
    return x


def probe_ms(loops: int = PROBE_LOOPS) -> float:
    """CPU time of a fixed piece of Python (`loops` additions in a loop), in ms."""
    t = time.thread_time()
    _work(loops)
    return (time.thread_time() - t) * 1e3


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median and 10th / 90th percentiles of probe times (ms); None without samples."""
    if not samples:
        return {"median_ms": None, "p10_ms": None, "p90_ms": None, "samples": 0}
    if len(samples) == 1:  # statistics.quantiles needs two
        one = round(samples[0], 3)
        return {"median_ms": one, "p10_ms": one, "p90_ms": one, "samples": 1}
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p10_ms": round(deciles[0], 3),
        "p90_ms": round(deciles[-1], 3),
        "samples": len(samples),
    }


class SpeedSampler:
    """The probe every `interval_s` in a child process while the `with` block runs; `.samples` after it.

    With `pin`, the child moves to the next CPU before each probe (the cores one by one), and
    `.cpus[i]` says where sample i ran."""

    def __init__(self, interval_s: float = INTERVAL_S, pin: bool = False) -> None:
        self.interval_s, self.pin = interval_s, pin
        self.samples: list[float] = []
        self.cpus: list[int] = []
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> SpeedSampler:
        """Start the child and wait for its first probe, so that its start-up (a Python process) falls
        before the measured window, not in it."""
        cmd = [sys.executable, "-m", "loadtest.speed", "--interval", str(self.interval_s)]
        self._proc = proc = subprocess.Popen(
            cmd + (["--pin"] if self.pin else []), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        weakref.finalize(self, proc.kill)  # a sampler never stopped does not outlive its owner
        assert proc.stdout is not None
        self._add(proc.stdout.readline())
        return self

    def __enter__(self) -> SpeedSampler:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> dict[str, Any]:
        """End the child and read its other probes -> `summary`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdout is not None
            proc.send_signal(signal.SIGTERM)
            self._add(proc.stdout.read())  # the child prints the rest as it ends
            proc.wait(timeout=10)
        return self.figures()

    def _add(self, text: str) -> None:
        for line in filter(None, text.splitlines()):
            cpu, ms = line.split()
            self.cpus.append(int(cpu))
            self.samples.append(float(ms))

    def figures(self) -> dict[str, Any]:
        """`summary` of the probes taken so far (all of them once stopped)."""
        return summary(self.samples)


class ProbeByMinute:
    """The probe's `summary` for each minute of a run whose driver ticks about once a second
    (`run_open_loop`'s `on_tick`): one sampler per minute, so that a drift over a long run (the soak)
    can be read against how fast the cores ran in each minute."""

    def __init__(self) -> None:
        self.minutes: list[dict[str, Any]] = []
        self._sampler: SpeedSampler | None = None
        self._minute = 0

    def tick(self, t: float) -> None:
        """At `t` seconds into the run: the first tick starts a sampler, the first of a new minute
        ends the last minute's and starts the next."""
        minute = int(t // 60)
        if self._sampler is not None and minute > self._minute:
            self.minutes.append(self._sampler.stop())
            self._sampler = None
        if self._sampler is None:
            self._sampler, self._minute = SpeedSampler().start(), minute

    def finish(self) -> list[dict[str, Any]]:
        """End the running minute's sampler -> every minute's `summary`, oldest first."""
        if self._sampler is not None:
            self.minutes.append(self._sampler.stop())
            self._sampler = None
        return self.minutes


def _child(interval_s: float, pin: bool) -> None:
    """The first probe at once (the parent may wait for it), the others kept until SIGTERM, then printed:
    nothing to fill the pipe meanwhile, no line cut by the signal."""
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    cpus = sorted(os.sched_getaffinity(0))
    kept: list[str] = []
    n = 0
    while not stop:
        cpu = cpus[n % len(cpus)] if pin else -1  # -1: wherever the scheduler put it
        if pin:
            os.sched_setaffinity(0, {cpu})
        line = f"{cpu} {probe_ms():.4f}"
        if n == 0:
            print(line, flush=True)
        else:
            kept.append(line)
        n += 1
        time.sleep(interval_s)
    print("\n".join(kept), flush=True)


def run_speed(seconds: float, interval_s: float = INTERVAL_S) -> dict[str, Any]:
    """The probe for `seconds` on each CPU in turn (an idle machine's spread, per core): JSON."""
    from loadtest.measure import machine_info  # here: measure imports this module

    started = datetime.now(UTC)

    with SpeedSampler(interval_s, pin=True) as s:
        time.sleep(seconds)
    per_cpu = {
        str(c): summary([ms for ms, cc in zip(s.samples, s.cpus, strict=True) if cc == c]) for c in sorted(set(s.cpus))
    }
    fastest = min(s.samples) if s.samples else None
    return {
        "kind": "speed",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "seconds": seconds,
        "interval_s": interval_s,
        "probe_loops": PROBE_LOOPS,
        "all": summary(s.samples),
        "per_cpu": per_cpu,
        # how far the typical probe is from the fastest one: 1.0 on a machine that runs at one speed
        "median_over_fastest": round(statistics.median(s.samples) / fastest, 3) if fastest else None,
        "samples": [[c, ms] for c, ms in zip(s.cpus, s.samples, strict=True)],
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--interval", type=float, default=INTERVAL_S)
    p.add_argument("--pin", action="store_true")
    a = p.parse_args(argv)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):  # the sampler's owner went away
        _child(a.interval, a.pin)


if __name__ == "__main__":
    main()
