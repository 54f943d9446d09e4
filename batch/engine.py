"""The service's engine, used for a chunk of rows at a time, and the worker that owns one.

`ChunkProfiler` validates each row exactly as `POST /profile` does (`service.schemas.ProfileRequest`,
then `ProfileEngine.encode`), runs the valid ones through the same ONNX Runtime session and FAISS
index in larger batches than the service's (throughput, not latency), and renders the record that
`GET /profile/<user>` reads. `ChunkWorker` is what a local process or a Ray actor holds: the bundle,
loaded once, and a Redis connection; it reads a chunk, profiles it and writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from batch.job import BatchJob
from batch.sources import Chunk, Row
from batch.writer import RedisWriter
from service.cache import profile_key
from service.config import Settings
from service.engine import EncodedUser, ProfileEngine
from service.errors import ServiceError
from service.schema_errors import first_problems
from service.schemas import ProfileRequest

# Users per ONNX Runtime run / FAISS search: per-user cost keeps falling up to about 64
# (docs/performance.md, `utpm bench model`), and nobody waits for a batch job's single user.
MODEL_BATCH = 64


@dataclass
class ChunkResult:
    index: int
    rows: int
    written: int
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    unknown_only: int = 0  # profiles written from rows none of whose values the bundle knows


def _reason(e: ValidationError) -> str:
    errors, more = first_problems(e.errors(), 3)
    problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:3]]
    return "; ".join(problems) + (" (and more)" if more or len(errors) > 3 else "")


class ChunkProfiler:
    """One bundle, loaded once: rows in, (cache key, record) pairs and rejects out."""

    def __init__(self, job: BatchJob) -> None:
        settings = Settings(bundle=job.bundle)
        self.engine = ProfileEngine.load(job.bundle, settings)
        self.job = job

    @property
    def version(self) -> str:
        return self.engine.version

    def profile(self, rows: list[Row]) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]], int]:
        """The records to write, the rejected rows, and how many records came from rows with no known value."""
        job, engine = self.job, self.engine
        rejects: list[dict[str, Any]] = []
        valid: list[tuple[Row, EncodedUser]] = []
        last: dict[str, int] = {}
        for row in rows:
            if row.error is not None:
                rejects.append({"row": row.number, "user_id": row.user_id, "reason": row.error})
                continue
            try:
                request = ProfileRequest.model_validate({"user_id": row.user_id, "features": row.features})
                encoded = engine.encode(request.features, job.k, False)
            except ValidationError as e:
                rejects.append({"row": row.number, "user_id": row.user_id, "reason": _reason(e)})
                continue
            except ServiceError as e:
                rejects.append({"row": row.number, "user_id": row.user_id, "reason": e.detail})
                continue
            row.user_id = request.user_id  # as the service would key it (whitespace stripped)
            if request.user_id in last:  # the later line of a user wins within a chunk, as a later POST would
                earlier = valid[last[request.user_id]][0]
                rejects.append(
                    {"row": earlier.number, "user_id": earlier.user_id, "reason": f"duplicate of row {row.number}"}
                )
            last[request.user_id] = len(valid)
            valid.append((row, encoded))
        keep = sorted(last.values())
        valid = [valid[i] for i in keep]
        records = []
        unknown_only = 0
        for lo in range(0, len(valid), MODEL_BATCH):
            part = valid[lo : lo + MODEL_BATCH]
            computed = engine.compute([u for _, u in part])
            for (row, user), prof in zip(part, computed, strict=True):
                assert row.user_id is not None
                rendered = engine.render(row.user_id, user, prof, job.computed_at_ms, job.expires_at_ms)
                records.append((profile_key(engine.version, row.user_id), rendered.record()))
                unknown_only += user.all_unknown
        return records, rejects, unknown_only


class ChunkWorker:
    """A local process's or a Ray actor's state: the bundle (loaded once) and a Redis connection."""

    def __init__(self, job: BatchJob) -> None:
        self.job = job
        self.profiler = ChunkProfiler(job)
        self.writer = RedisWriter(job.redis_url, job.redis_timeout_ms)

    def __call__(self, chunk: Chunk) -> ChunkResult:
        t0 = time.perf_counter()
        rows = self.job.source.read(chunk)
        records, rejects, unknown_only = self.profiler.profile(rows)
        self.writer.write(records, self.job.expires_at_ms)
        return ChunkResult(chunk.index, chunk.rows, len(records), rejects, time.perf_counter() - t0, unknown_only)

    def close(self) -> None:
        self.writer.close()
