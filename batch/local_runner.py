"""`--engine local`: worker processes on this machine, each holding the bundle once (a process pool)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from batch.engine import ChunkResult, ChunkWorker
from batch.job import BatchError, BatchJob
from batch.sources import Chunk

# Chunks queued per worker beyond the one it computes: keeps it busy, bounds the driver's memory.
QUEUE_PER_WORKER = 2

_worker: ChunkWorker | None = None
_init_error: str | None = None


def _init(job: BatchJob) -> None:
    global _worker, _init_error
    try:
        _worker = ChunkWorker(job)
    except Exception as e:  # reported with the first chunk: a pool initializer that raises only breaks the pool
        _init_error = f"{type(e).__name__}: {e}"


def _run(chunk: Chunk) -> ChunkResult:
    if _worker is None:
        raise BatchError(f"a worker could not load the bundle: {_init_error}")
    return _worker(chunk)


def run_local(job: BatchJob, chunks: Sequence[Chunk], workers: int) -> Iterator[ChunkResult]:
    """Results of `chunks` as they finish (any order)."""
    # spawn, not fork: the driver may hold ONNX Runtime / OpenMP threads, which fork does not copy safely
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(job,)) as pool:
        todo = iter(chunks)
        inflight: set[Future[ChunkResult]] = set()
        try:
            for chunk in todo:
                inflight.add(pool.submit(_run, chunk))
                if len(inflight) >= workers * (1 + QUEUE_PER_WORKER):
                    break
            while inflight:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise BatchError("a worker process died (out of memory, or killed)") from None
                    yield result
                    nxt = next(todo, None)
                    if nxt is not None:
                        inflight.add(pool.submit(_run, nxt))
        finally:
            for future in inflight:
                future.cancel()
