"""Micro-batching: gather concurrent requests into one model run, off the event loop.

A batch starts when a worker is free: the collector takes a worker first and then gathers,
so every request that queued while all workers were busy rides in the next batch (under load,
batches form by themselves, without any waiting). A request then waits at most `max_wait_ms`
for company, and only when company is expected that soon: the collector keeps a moving average
of the gap between arrivals, and when that gap is longer than `max_wait_ms` (one client at a
time, light load) the batch runs at once instead of idling for nobody. Batches run in a thread
pool (ONNX Runtime and FAISS release the GIL), at most `workers` at a time. The queue is bounded:
past `max_pending` users waiting, `submit` raises `Overloaded` at once instead of queueing
without bound, so accepted requests keep a bounded latency.

With several workers, a batch that would start while another is running starts only once it is
full (`max_batch_size`) or the running batch has finished: two half batches on two cores cost
more per user than one full batch, and while one batch runs its core is busy anyway. So at low
concurrency one batch at a time runs small batches, and as concurrency grows the batches grow to
full size before a second worker joins (what it bought: docs/performance.md, "Where the time goes").

Why not a library: of the batchers on PyPI, async-batcher (0.2.2, the closest) waits its
max_queue_time for company even when none is coming and starts another batch whenever its
concurrency allows; batched (0.1.5) runs one thread over an unbounded queue, so it cannot shed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Overloaded(Exception):
    """Too much work is already queued; the caller should retry later."""


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        max_batch_size: int,
        max_wait_ms: float,
        max_pending: int,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
        thread_init: Callable[[], object] | None = None,
        full_second_batch: bool = True,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_pending = max_pending
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] = asyncio.Queue()
        self._pending = 0
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="utpm-batch", initializer=thread_init
        )
        self._slots = asyncio.Semaphore(workers)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.full_second_batch = full_second_batch  # False: the behaviour before (for the A/B only)
        self._running = 0  # batches computing now
        self._wake = asyncio.Event()  # set when users are queued or a batch finishes
        self._last_arrival = 0.0
        self._gap = 1.0  # moving average of the time between arrivals (s), capped at 1 s per gap

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="utpm-batcher")

    async def submit_many(self, items: Sequence[In]) -> list[Out]:
        """Queue items (all or none, against the bound) and wait for their results."""
        if self._pending + len(items) > self.max_pending:
            raise Overloaded(f"{self._pending} users already queued (limit {self.max_pending})")
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._gap = 0.8 * self._gap + 0.2 * min(now - self._last_arrival, 1.0)
        self._last_arrival = now
        futures = []
        self._pending += len(items)
        try:
            for item in items:
                fut: asyncio.Future[Out] = loop.create_future()
                futures.append(fut)
                self._queue.put_nowait((item, fut))
            self._wake.set()
            if len(futures) == 1:  # one user per request is the usual case: no gather around one future
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        finally:
            self._pending -= len(items)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            slot = False
            try:
                # A worker first, then company: what queued while every worker was busy joins now.
                await self._slots.acquire()
                slot = True
                self._take_queued(batch)
                # Another batch is running: this one starts full, or once that one has finished.
                while self.full_second_batch and self._running and len(batch) < self.max_batch_size:
                    self._wake.clear()
                    await self._wake.wait()
                    self._take_queued(batch)
                if len(batch) < self.max_batch_size and self._gap < self.max_wait:
                    deadline = loop.time() + self.max_wait
                    while len(batch) < self.max_batch_size:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                        except TimeoutError:
                            break
                        self._take_queued(batch)
            except asyncio.CancelledError:  # closing: `close` runs what was taken, nobody is left hanging
                for item in batch:
                    self._queue.put_nowait(item)
                if slot:
                    self._slots.release()
                raise
            self._running += 1
            task = loop.create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _take_queued(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        """Move what is queued right now into `batch`, up to the batch size."""
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _run(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            live = [(x, f) for x, f in batch if not f.done()]  # a cancelled request needs no work
            if not live:
                return
            if self.on_batch is not None:
                self.on_batch(len(live))
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [x for x, _ in live])
            except Exception as e:  # the model failed: every caller of this batch gets the error
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                return
            for (_, f), r in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(r)
        finally:
            self._running -= 1
            self._wake.set()
            self._slots.release()

    async def close(self) -> None:
        """Stop collecting, let batches in flight finish, then stop the threads."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # users still queued but not batched: run them so nobody is left hanging
        leftovers = []
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for lo in range(0, len(leftovers), self.max_batch_size):
            await self._slots.acquire()
            self._running += 1
            await self._run(leftovers[lo : lo + self.max_batch_size])
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._executor.shutdown(wait=True)
