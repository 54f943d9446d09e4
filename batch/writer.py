"""Pipelined writes of profile records into Redis (single node or Cluster), as the service stores them.

Every record is one SET with an absolute expiry (PXAT, the record's own `expires_at`), so a record
is either wholly there or absent, and a rerun or a resumed job writes identical keys, values and
expiry times. The model version is registered (service.stale's registry, only if new) so that a
version warmed before `/admin/reload` is known as soon as it is served.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.redis_client import redact_url, sync_client
from service.stale import REGISTRY_KEY

# Commands per pipeline: one round trip each, small enough to stay under any client buffer limit.
PIPELINE_COMMANDS = 500
# A failed pipeline is retried this many times (with 0.5, 1, 2 s pauses) before the job stops;
# its chunk is not checkpointed, so `--resume` redoes it.
WRITE_TRIES = 4


class WriteFailed(RuntimeError):
    """Redis refused or lost writes even after retries."""


class RedisWriter:
    def __init__(self, url: str, timeout_ms: int = 5000) -> None:
        self.url = url
        self.client = sync_client(url, timeout_ms / 1000)

    def check(self) -> None:
        """Fail early, naming the (redacted) URL, when Redis cannot be reached."""
        from redis.exceptions import RedisError

        try:
            self.client.ping()
        except (RedisError, OSError) as e:
            raise WriteFailed(f"cannot reach Redis at {redact_url(self.url)}: {e}") from None

    def register(self, version: str, at_ms: int) -> None:
        """Add the model version to the registry GET's stale fallback reads (kept if already there)."""
        self.client.zadd(REGISTRY_KEY, {version: at_ms}, nx=True)

    def write(self, records: Sequence[tuple[str, bytes]], expires_at_ms: int) -> None:
        from redis.exceptions import ConnectionError, RedisError, TimeoutError

        for lo in range(0, len(records), PIPELINE_COMMANDS):
            part = records[lo : lo + PIPELINE_COMMANDS]
            for attempt in range(WRITE_TRIES):
                try:
                    pipe = self.client.pipeline(transaction=False)
                    for key, value in part:
                        pipe.set(key, value, pxat=expires_at_ms)
                    results = pipe.execute(raise_on_error=False)
                except (ConnectionError, TimeoutError, OSError) as e:
                    if attempt + 1 == WRITE_TRIES:
                        raise WriteFailed(f"Redis at {redact_url(self.url)}: {e} (after {WRITE_TRIES} tries)") from None
                    time.sleep(0.5 * 2**attempt)
                    continue
                except RedisError as e:
                    raise WriteFailed(f"Redis at {redact_url(self.url)} refused the writes: {e}") from None
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    raise WriteFailed(f"Redis at {redact_url(self.url)} refused {len(failed)} writes: {failed[0]}")
                break

    def close(self) -> None:
        self.client.close()
