"""Prometheus metrics of the service, on a registry of its own (one per app instance)."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, ProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        self.request_seconds = Histogram(
            "utpm_request_seconds",
            "Request latency by route, method and status class.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "utpm_stage_seconds",
            "Time per stage: parse, queue, encode (utpm-hist: the batch's, in its thread), model, index, cache.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram("utpm_batch_size", "Users per model run.", buckets=BATCH_BUCKETS, registry=r)
        self.cache_read_batch = Histogram(
            "utpm_cache_read_batch_size",
            "Cache reads sent to Redis in one round trip (reads of one event-loop turn share it).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.near_cache_hits = Counter(
            "utpm_near_cache_hits_total",
            "Cache hits answered by the in-process near cache (no Redis call).",
            registry=r,
        )
        self.cache_requests = Counter(
            "utpm_cache_requests_total", "Cache reads by result (hit, miss, error).", ["result"], registry=r
        )
        self.cache_writes = Counter(
            "utpm_cache_writes_total", "Cache writes by result (ok, skipped).", ["result"], registry=r
        )
        self.errors = Counter("utpm_errors_total", "Error responses by kind.", ["kind"], registry=r)
        self.pending = Gauge("utpm_pending_users", "Users queued for the model.", registry=r)
        self.reloads = Counter("utpm_reloads_total", "Bundle reloads by result.", ["result"], registry=r)
        self.fleet_applies = Counter(
            "utpm_fleet_applies_total",
            "Fleet states this replica applied, by result (service.fleet).",
            ["result"],
            registry=r,
        )
        self.fleet_in_sync = Gauge(
            "utpm_fleet_in_sync",
            "0 while this replica could not apply the fleet's last state (service.fleet), else 1.",
            registry=r,
        )
        self.fleet_in_sync.set(1)
        self.bundle_info = Gauge("utpm_bundle_info", "The bundle being served.", ["version", "model"], registry=r)
        # With several uvicorn workers a scrape reaches one of them: the pid tells their samples apart.
        Gauge("utpm_process", "This worker process, by pid.", ["pid"], registry=r).labels(str(os.getpid())).set(1)
        self.gc_pause = Histogram(
            "utpm_gc_pause_seconds",
            "Cyclic garbage-collector pauses by generation (the event loop stands still meanwhile).",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_state = Enum(
            "utpm_redis_breaker_state",
            "The Redis circuit breaker: closed (calls go through), open (fail fast), half_open (one probe).",
            states=["closed", "open", "half_open"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "utpm_redis_breaker_transitions_total",
            "Circuit breaker state changes, by new state.",
            ["state"],
            registry=r,
        )
        # The labelled children the hot paths use, looked up once (`labels()` takes a lock per call).
        self.stage = {s: self.stage_seconds.labels(s) for s in ("parse", "queue", "encode", "model", "index", "cache")}
        self.cache_result = {x: self.cache_requests.labels(x) for x in ("hit", "miss", "error")}
        self.cache_write = {x: self.cache_writes.labels(x) for x in ("ok", "skipped")}

    def on_breaker_state(self, state: str) -> None:
        self.breaker_state.state(state)
        self.breaker_transitions.labels(state).inc()

    def watch_gc(self) -> None:
        """Time every collection of the cyclic GC into `utpm_gc_pause_seconds` (until `unwatch_gc`)."""
        children = [self.gc_pause.labels(str(g)) for g in range(3)]
        started = [0.0]

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                children[info["generation"]].observe(time.perf_counter() - started[0])

        self._gc_callback = callback
        gc.callbacks.append(callback)

    def unwatch_gc(self) -> None:
        callback = getattr(self, "_gc_callback", None)
        if callback is not None and callback in gc.callbacks:
            gc.callbacks.remove(callback)
