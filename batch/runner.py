"""The driver: plan the chunks, skip those a previous run finished, hand the rest to an engine,
and record each finished chunk (rejects first, then the checkpoint line) as its result comes back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

from batch.checkpoint import Checkpoint
from batch.engine import ChunkResult
from batch.job import BatchError, BatchJob, Summary, check_redis_url
from batch.rejects import RejectsFile
from batch.writer import RedisWriter, WriteFailed
from model_export.errors import BundleError
from service.config import MAX_CACHE_TTL_MS
from service.profile_record import iso_ms
from service.redis_client import redact_url

Engine = Literal["local", "ray"]
ProgressFn = Callable[[int, int], None]  # (rows done, rows in the input)
SUMMARY_FILE = "summary.json"
# The last millisecond an ISO 8601 record time can name (9999-12-31T23:59:59.999Z)
LAST_AS_OF_MS = 253_402_300_799_999


def bundle_version(bundle: Path) -> str:
    """The bundle's version from its manifest (the workers verify the whole bundle when they load it)."""
    from model_export.manifest import MANIFEST_FILE, Manifest, read_json_object

    if not (bundle / MANIFEST_FILE).is_file():
        raise BatchError(f"{bundle}: not a bundle (no {MANIFEST_FILE}; `utpm export` writes one)")
    try:
        return Manifest.from_dict(read_json_object(bundle / MANIFEST_FILE, BundleError)).bundle_version
    except (BundleError, OSError, KeyError, TypeError, ValueError) as e:
        raise BatchError(f"{bundle}: not a bundle ({e})") from None


def _check(job: BatchJob, workers: int, engine: Engine, ray_address: str | None) -> None:
    if workers < 1:
        raise BatchError(f"--workers must be at least 1, got {workers}")
    if not 1 <= job.k <= 1000:
        raise BatchError(f"--k must be between 1 and 1000, got {job.k}")
    if job.chunk_users < 1:
        raise BatchError(f"--chunk-users must be at least 1, got {job.chunk_users}")
    if not 1000 <= job.ttl_ms <= MAX_CACHE_TTL_MS:
        raise BatchError(
            f"--ttl-s must be between 1 and {MAX_CACHE_TTL_MS // 1000:,} (10 years, as UTPM_CACHE_TTL_MS), "
            f"got {job.ttl_ms // 1000:,}"
        )
    if not 0 <= job.computed_at_ms <= LAST_AS_OF_MS:
        raise BatchError(
            f"--as-of must be between 1970 and 9999 (epoch ms 0 to {LAST_AS_OF_MS}), got {job.computed_at_ms}"
        )
    if ray_address is not None and engine != "ray":
        raise BatchError("--ray-address joins a Ray cluster: it needs --engine ray")


def run_batch(
    job: BatchJob,
    *,
    engine: Engine = "local",
    workers: int = 2,
    ray_address: str | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    say: Callable[[str], None] | None = None,
) -> Summary:
    """Profile every row of `job.source` into Redis; see the package docstring and docs/batch.md."""
    t0 = time.perf_counter()
    _check(job, workers, engine, ray_address)
    version = bundle_version(job.bundle)
    check_redis_url(job.redis_url)
    writer = RedisWriter(job.redis_url, job.redis_timeout_ms)
    try:
        writer.check()
    except WriteFailed as e:
        raise BatchError(str(e)) from None
    checkpoint = Checkpoint(job.out)
    before = checkpoint.previous() if resume else None
    if resume and before is None and say is not None:  # a mistyped --out would otherwise redo the job unnoticed
        say(f"--resume: no checkpoint in {job.out}; starting from the first row")
    if job.computed_at_ms == 0:  # one computed_at per job: a resumed run keeps the first run's
        start = int(before.identity.get("computed_at_ms", 0)) if before is not None else 0
        job = replace(job, computed_at_ms=start or time.time_ns() // 1_000_000)
    if job.expires_at_ms <= time.time_ns() // 1_000_000:
        raise BatchError(
            f"the profiles would expire at {iso_ms(job.expires_at_ms)}, which is past: "
            "a later --as-of or a longer --ttl-s"
        )
    chunks = job.source.plan(job.chunk_users)
    identity = {
        "source": job.source.fingerprint(),
        "model_version": version,
        "k": job.k,
        "ttl_ms": job.ttl_ms,
        "computed_at_ms": job.computed_at_ms,
        "chunk_users": job.chunk_users,
        "redis": redact_url(job.redis_url),
    }
    state = checkpoint.open(identity, resume)
    (job.out / SUMMARY_FILE).unlink(missing_ok=True)  # a previous job's, which a killed run would leave as its own
    rejects = RejectsFile(job.out)
    rejects.open(state.rejects_bytes)
    pending = [c for c in chunks if c.index not in state.done]
    total = sum(c.rows for c in chunks)
    skipped = state.rows_done
    writer.register(version, job.computed_at_ms)
    writer.close()
    done_rows, written, rejected, unknown_only = skipped, 0, 0, 0
    first_result: float | None = None
    if progress is not None:
        progress(done_rows, total)
    results: list[ChunkResult] = []
    try:
        if pending:
            if engine == "ray":
                from batch.ray_runner import run_ray

                stream = run_ray(job, pending, workers, ray_address)
            else:
                from batch.local_runner import run_local

                stream = run_local(job, pending, workers)
            for result in stream:
                if first_result is None:
                    first_result = time.perf_counter() - result.seconds
                offset = rejects.append(result.rejects)
                checkpoint.record(result.index, result.rows, result.written, len(result.rejects), offset)
                written += result.written
                unknown_only += result.unknown_only
                rejected += len(result.rejects)
                done_rows += result.rows
                results.append(result)
                if progress is not None:
                    progress(done_rows, total)
    except (WriteFailed, BatchError) as e:
        raise BatchError(f"{e}; the chunks written so far are checkpointed: rerun with --resume") from None
    finally:
        checkpoint.close()
        rejects.close()
    seconds = time.perf_counter() - t0
    summary = Summary(
        model_version=version,
        rows=total,
        written=written,
        rejected=rejected,
        unknown_only=unknown_only,
        skipped=skipped,
        chunks=len(chunks),
        seconds=round(seconds, 3),
        engine=engine,
        workers=workers,
        computed_at=iso_ms(job.computed_at_ms),
        expires_at=iso_ms(job.expires_at_ms),
        rejects_path=str(rejects.path),
        startup_seconds=round((first_result - t0) if first_result is not None else 0.0, 3),
    )
    (job.out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
