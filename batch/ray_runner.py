"""`--engine ray`: the same chunk worker as a Ray Data actor pool (`map_batches`), each actor
loading the bundle once. Ray is the engine for populations that outgrow one machine.

Without `--ray-address` a small local Ray starts for the job (as many CPUs as workers, a small
object store, no dashboard) and stops after it; with one, the job joins that cluster, whose nodes
must reach the input file, the bundle and Redis at the same paths and URL. The dataset holds only
chunk descriptors (a few integers each): actors read their rows themselves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from batch.engine import ChunkResult, ChunkWorker
from batch.job import BatchError, BatchJob
from batch.sources import Chunk
from batch.writer import WriteFailed

# The local Ray's object store: it carries chunk descriptors and per-chunk summaries only.
OBJECT_STORE_BYTES = 128 * 1024 * 1024
# Blocks of chunk descriptors: enough to spread over any actor pool, few enough for Ray Data's bookkeeping.
MAX_BLOCKS = 10_000


class RayChunkWorker:
    """One Ray actor: a ChunkWorker (bundle + Redis) for every batch of chunk descriptors it is given."""

    def __init__(self, job: BatchJob) -> None:
        self.worker = ChunkWorker(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        results = [
            self.worker(Chunk(int(i), int(f), int(r), int(a), int(b)))
            for i, f, r, a, b in zip(
                batch["index"], batch["first_row"], batch["rows"], batch["start"], batch["stop"], strict=True
            )
        ]
        return {
            "index": np.array([r.index for r in results], dtype=np.int64),
            "rows": np.array([r.rows for r in results], dtype=np.int64),
            "written": np.array([r.written for r in results], dtype=np.int64),
            "seconds": np.array([r.seconds for r in results], dtype=np.float64),
            "unknown_only": np.array([r.unknown_only for r in results], dtype=np.int64),
            "rejects": np.array([json.dumps(r.rejects) for r in results], dtype=object),
        }


def start_ray(workers: int, address: str | None) -> bool:
    """Join `address`, or start a small local Ray; True when this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=workers, object_store_memory=OBJECT_STORE_BYTES, **common)
    return True


def run_ray(job: BatchJob, chunks: Sequence[Chunk], workers: int, address: str | None = None) -> Iterator[ChunkResult]:
    """Results of `chunks` as they finish (any order)."""
    import ray
    import ray.data

    owned = start_ray(workers, address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the command line draws its own
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes would break the progress bar
        items = [
            {"index": c.index, "first_row": c.first_row, "rows": c.rows, "start": c.start, "stop": c.stop}
            for c in chunks
        ]
        # one block per chunk (up to a bound): the actor pool hands out blocks, so a single block would
        # keep every actor but one idle
        blocks = max(1, min(len(items), MAX_BLOCKS))
        results = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            RayChunkWorker,
            fn_constructor_kwargs={"job": job},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            batch_format="numpy",
        )
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                for i in range(len(batch["index"])):
                    yield ChunkResult(
                        int(batch["index"][i]),
                        int(batch["rows"][i]),
                        int(batch["written"][i]),
                        json.loads(str(batch["rejects"][i])),
                        float(batch["seconds"][i]),
                        int(batch["unknown_only"][i]),
                    )
        except (WriteFailed, BatchError):
            raise
        except Exception as e:  # Ray wraps an actor's exception; name its root cause, not Ray's frames
            cause = e.__cause__ or e
            raise BatchError(f"a Ray worker failed: {type(cause).__name__}: {cause}") from None
    finally:
        if owned:
            ray.shutdown()
