"""What a batch job is (everything that decides its records) and what it reports at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.sources import Source
from service.redis_client import check_url

# Two days: a population refreshed daily keeps a profile through one missed refresh.
DEFAULT_TTL_MS = 2 * 24 * 3600 * 1000
# The service's UTPM_CACHE_TAGS default: GET can answer up to this many tags from a record.
DEFAULT_K = 100
# Rows per chunk: the unit of work, of the checkpoint and of a Redis pipeline.
DEFAULT_CHUNK_USERS = 1000


class BatchError(Exception):
    """A job that cannot run as asked (bad input, unreachable Redis, mismatched checkpoint): the message says why."""


def check_redis_url(url: str) -> None:
    """BatchError naming `--redis-url` and what is wrong with it (never its password)."""
    try:
        check_url(url)
    except ValueError as e:
        raise BatchError(f"--redis-url: {e}") from None


@dataclass(frozen=True)
class BatchJob:
    """Everything that decides the records a job writes; picklable (sent to every worker)."""

    source: Source
    bundle: Path
    redis_url: str
    out: Path  # job directory: checkpoint.jsonl, rejects.jsonl, summary.json (and staged features)
    k: int = DEFAULT_K
    ttl_ms: int = DEFAULT_TTL_MS
    chunk_users: int = DEFAULT_CHUNK_USERS
    # computed_at of every record: fixed per job so that a resumed or re-run job writes identical
    # records; 0 = the start of the job (or the checkpoint's, on --resume)
    computed_at_ms: int = 0
    redis_timeout_ms: int = 5000

    @property
    def expires_at_ms(self) -> int:
        return self.computed_at_ms + self.ttl_ms


@dataclass
class Summary:
    model_version: str
    rows: int  # rows in the input
    written: int  # profiles written by this run
    rejected: int  # rows rejected by this run (see rejects.jsonl)
    skipped: int  # rows of chunks a previous run had finished (--resume)
    chunks: int
    seconds: float
    engine: str
    workers: int
    computed_at: str
    expires_at: str
    rejects_path: str
    startup_seconds: float = 0.0  # of that, starting workers (and Ray) and loading the bundle
    unknown_only: int = 0  # of `written`, profiles of rows none of whose values the bundle knows

    @property
    def users_per_s(self) -> float:
        return (self.written + self.rejected) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"wrote {self.written:,} profiles of model {self.model_version}, rejected {self.rejected:,} rows "
            f"({self.rejects_path}), skipped {self.skipped:,} rows already done, in {self.seconds:.1f}s "
            f"({self.startup_seconds:.1f}s of it starting {self.engine} x{self.workers}; "
            f"{self.users_per_s:,.0f} users/s); expires {self.expires_at}" + self._unknown_note()
        )

    def _unknown_note(self) -> str:
        if not self.unknown_only:
            return ""
        share = self.unknown_only / max(1, self.written)
        return (
            f"; warning: {self.unknown_only:,} profiles ({share:.0%}) came from rows with no value the bundle "
            "knows (is the input the bundle's catalogue?)"
        )

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "users_per_s": round(self.users_per_s, 1)}
