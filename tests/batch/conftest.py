"""Fixtures of the batch-job tests: the MovieLens population as JSONL rows, a Redis database per
test (on the session's real redis-server), and one small local Ray for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer

AS_OF_MS = 1_796_000_000_000  # 2026-11-30T...: fixed, so that every run writes identical records
TTL_S = 10 * 365 * 24 * 3600  # the records must outlive the test session, whatever the clock


@pytest.fixture(scope="session")
def population(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every MovieLens user's features built by the training protocol, one JSONL row each."""
    from batch.sources import stage_dataset

    return stage_dataset(movielens_dir, tmp_path_factory.mktemp("population"))


def db_url(server: RedisServer, db: int) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def contents(server: RedisServer, db: int) -> dict[bytes, tuple[bytes, int]]:
    """Every profile key of database `db`: (value, absolute expiry in ms)."""
    client = redis.Redis(port=server.port, db=db)
    out: dict[bytes, tuple[bytes, int]] = {}
    for key in client.scan_iter(match="utpm:profile:*", count=1000):
        value = client.get(key)
        assert isinstance(key, bytes) and isinstance(value, bytes)
        out[key] = (value, int(client.execute_command("PEXPIRETIME", key)))
    client.close()
    return out


def flush(server: RedisServer, db: int) -> str:
    """Empty database `db` (1-15: the service tests use 0) and return its URL."""
    client = redis.Redis(port=server.port, db=db)
    client.flushdb()
    client.close()
    return db_url(server, db)


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One small local Ray (2 CPUs, no dashboard) for every Ray test of the session."""
    import ray

    from batch.ray_runner import start_ray

    started = start_ray(2, None)
    yield
    if started:
        ray.shutdown()
