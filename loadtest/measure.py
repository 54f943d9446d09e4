"""What every run measures the same way: latency percentiles (one definition for locust, wrk and the
reliability scenarios, so p99s from different commands compare), CPU per run, and the machine."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtest.speed import SpeedSampler

QUANTILES = (50, 90, 95, 99)


def percentiles(values: Iterable[float], counts: Iterable[int] | None = None) -> dict[str, float | None]:
    """p50/p90/p95/p99 of `values` (each seen `counts` times if given): numpy's linear interpolation."""
    v = np.asarray(list(values), dtype=float)
    if counts is not None:
        v = np.repeat(v, np.asarray(list(counts), dtype=int))
    if v.size == 0:
        return {f"p{q}_ms": None for q in QUANTILES}
    return {f"p{q}_ms": round(float(x), 2) for q, x in zip(QUANTILES, np.percentile(v, QUANTILES), strict=True)}


def histogram_percentiles(hist: Mapping[Any, int]) -> dict[str, float | None]:
    """The same percentiles over a {latency_ms: count} histogram (locust's, wrk's)."""
    return percentiles((float(k) for k in hist), hist.values())


def _machine_busy() -> float:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return sum(t) - idle


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """Cores used over one run by the load generator (this process' waited-for children), the
    server (`server_cpu`) and the whole machine; the rest is other people's work on it. And how fast
    the cores ran meanwhile (`speed.SpeedSampler`: the CPU probe's median and spread)."""

    def __init__(self, server_cpu: Callable[[], float]) -> None:
        self.server_cpu = server_cpu
        self.speed = SpeedSampler().start()
        self.start = (_children_cpu(), server_cpu(), _machine_busy(), time.monotonic())

    def close(self) -> dict[str, Any]:
        gen0, srv0, busy0, t0 = self.start
        wall = max(time.monotonic() - t0, 1e-9)
        gen, srv = (_children_cpu() - gen0) / wall, (self.server_cpu() - srv0) / wall
        machine = (_machine_busy() - busy0) / wall
        # the sampler is waited for after the children's CPU was read: its ~1% is not the load generator's
        probe = self.speed.stop()
        return {
            "loadgen_cores": round(gen, 2),
            "service_cores": round(srv, 2),
            "machine_busy_cores": round(machine, 2),
            "other_cores": round(max(0.0, machine - gen - srv), 2),
            "cpu_probe": probe,
        }


def machine_info() -> dict[str, object]:
    """CPU model, cores, memory and OS of this machine, for the report."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), model)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": " ".join(os.uname()[i] for i in (0, 2)),
        "python": sys.version.split()[0],
        "hostname": socket.gethostname(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
