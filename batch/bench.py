"""`utpm profile bench`: users/s of each engine on one population, Redis memory per profile, and
the sizing for 100M users derived from those two measurements (assumptions in the JSON)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batch.job import BatchError, BatchJob, check_redis_url
from batch.runner import run_batch
from batch.sources import JsonlSource, open_source
from service.redis_client import redact_url, sync_client

# Sizing assumptions (stated in the output): a worker node's vCPUs, of which one is left to the
# OS, the Ray raylet and the Redis client; a Redis shard's memory budget; the population.
NODE_VCPUS = 16
POPULATION = 100_000_000
SHARD_MEMORY_GB = 25
NODE_COUNTS = (1, 4, 16, 64)


def _population(source: Path, out: Path, users: int, say: Callable[[str], None]) -> Path:
    """The first `users` rows of the source, as one JSONL file (staged through the protocol if a data set)."""
    full = open_source(source, "auto", out / "staged", say)
    if not isinstance(full, JsonlSource):
        raise BatchError(f"{source}: the benchmark reads a data set directory or a JSONL file")
    path = out / f"population-{users}.jsonl"
    if not path.is_file():
        n = 0
        with full.path.open("rb") as src, (out / "population.tmp").open("wb") as dst:
            for line in src:
                if n >= users:
                    break
                dst.write(line)
                n += 1
        if n < users:
            raise BatchError(f"{source} has {n:,} users, fewer than --users {users:,}")
        os.replace(out / "population.tmp", path)
    return path


def _redis_memory(client: Any, written: int, before: int) -> dict[str, Any]:
    import random

    after = int(client.info("memory")["used_memory"])
    keys = [k for k in (client.randomkey() for _ in range(1000)) if k and k.startswith(b"utpm:profile:")]
    random.shuffle(keys)
    usage = [int(client.memory_usage(k, samples=0) or 0) for k in keys[:1000]]
    sizes = [int(client.strlen(k)) for k in keys[:1000]]
    return {
        "profiles": written,
        "used_memory_delta_bytes": after - before,
        "bytes_per_profile_info": round((after - before) / written, 1) if written else None,
        "memory_usage_mean_bytes": round(sum(usage) / len(usage), 1) if usage else None,
        "value_mean_bytes": round(sum(sizes) / len(sizes), 1) if sizes else None,
        "sampled_keys": len(usage),
    }


def sizing(per_worker_users_s: float, efficiency: float, bytes_per_profile: float, k: int) -> dict[str, Any]:
    """Nodes, hours and Redis memory for POPULATION users from the measured rates and bytes.

    Two scaling cases: `linear` (each worker has a core of its own, Redis runs elsewhere) and
    `as_measured` (the 2-process efficiency measured here, where both workers, the driver and Redis
    shared two cores with other jobs: a pessimistic floor, not a property of a node).
    """
    workers_per_node = NODE_VCPUS - 1
    rows = []
    for nodes in NODE_COUNTS:
        row: dict[str, Any] = {"nodes": nodes}
        for case, eff in (("linear", 1.0), ("as_measured", efficiency)):
            rate = per_worker_users_s * workers_per_node * eff * nodes
            row[case] = {"users_per_s": round(rate), "hours": round(POPULATION / rate / 3600, 2)}
        rows.append(row)
    one_version_gb = POPULATION * bytes_per_profile / 1e9
    return {
        "assumptions": {
            "population": POPULATION,
            "node_vcpus": NODE_VCPUS,
            "workers_per_node": workers_per_node,
            "per_worker_users_s": round(per_worker_users_s, 1),
            "measured_efficiency_2_workers": round(efficiency, 3),
            "note": "per-worker rate: the local 1-process run's steady users/s here; nodes independent (no shared "
            "state but Redis); Redis sharded so that it keeps up; k as measured",
            "k": k,
            "redis_shard_memory_gb": SHARD_MEMORY_GB,
        },
        "nodes": rows,
        "redis": {
            "bytes_per_profile": round(bytes_per_profile, 1),
            "one_version_gb": round(one_version_gb, 1),
            "during_rollout_gb": round(2 * one_version_gb, 1),
            "shards_at_rollout": max(1, -(-int(2 * one_version_gb) // SHARD_MEMORY_GB)),
            "note": "during a rollout the old version's profiles stay until they expire (the stale fallback "
            "reads them), so plan for two versions; replicas double it again",
        },
    }


def sizing_of(result: dict[str, Any]) -> dict[str, Any] | None:
    """The 100M-user sizing derived from a bench result's local 1- and 2-process runs and its Redis bytes."""
    by = {(r["engine"], r["workers"]): r for r in result["runs"]}
    one, two = by.get(("local", 1)), by.get(("local", 2))
    memory = result.get("redis_memory", {})
    if not (one and two and memory.get("bytes_per_profile_info")):
        return None
    per_worker = float(one["steady_users_per_s"])
    efficiency = float(two["steady_users_per_s"]) / (2 * per_worker)
    return sizing(per_worker, efficiency, float(memory["bytes_per_profile_info"]), int(result["k"]))


def bench_batch(
    bundle: Path,
    source: Path,
    redis_url: str,
    out: Path,
    users: int,
    runs: Sequence[tuple[str, int]],
    k: int = 50,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run each (engine, workers) over the same population into a flushed Redis; JSON-able results."""
    check_redis_url(redis_url)
    out.mkdir(parents=True, exist_ok=True)
    population = _population(source, out, users, say)
    client = sync_client(redis_url, 5.0)
    results: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    for engine, workers in runs:
        client.flushdb()
        before = int(client.info("memory")["used_memory"])
        job = BatchJob(
            source=JsonlSource(population),
            bundle=bundle,
            redis_url=redis_url,
            out=out / f"run-{engine}-{workers}",
            k=k,
        )
        say(f"{engine} x{workers}: {users:,} users ...")
        load = os.getloadavg()[0]
        summary = run_batch(job, engine=engine, workers=workers)  # type: ignore[arg-type]
        steady_s = summary.seconds - summary.startup_seconds
        row = {
            **summary.to_dict(),
            "steady_users_per_s": round(summary.rows / steady_s, 1) if steady_s > 0 else None,
            "load_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
        }
        results.append(row)
        say(f"  {summary.line()}")
        memory = _redis_memory(client, summary.written, before)
    client.close()
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "bundle": str(bundle),
        "population": str(population),
        "users": users,
        "k": k,
        "redis": redact_url(redis_url),
        "runs": results,
        "redis_memory": memory,
    }
    result["sizing_100m"] = sizing_of(result)
    return result
