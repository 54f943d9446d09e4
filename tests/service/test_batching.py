"""The micro-batcher's policy (service.batching), with a model that blocks until the test lets it go."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from service.batching import MicroBatcher


class BlockingModel:
    """Records each batch's size and holds it until `release()`."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.sizes.append(len(items))
        self.gate.wait(10)
        return [x * 10 for x in items]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


def run(scenario: str, full_second_batch: bool = True) -> list[int]:
    async def main() -> list[int]:
        model = BlockingModel()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            model, 4, 0.0, 64, workers=2, full_second_batch=full_second_batch
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit_many([1]))  # batch A: one user, held
        await _settle()
        second = asyncio.ensure_future(batcher.submit_many([2, 3]))
        await _settle()
        tasks = [first, second]
        if scenario == "fill":
            tasks.append(asyncio.ensure_future(batcher.submit_many([4, 5])))
            await _settle()
        model.gate.set()  # everything still held goes now
        results = await asyncio.gather(*tasks)
        assert [r[0] for r in results][:2] == [10, 20]
        await batcher.close()
        return model.sizes

    return asyncio.run(main())


def test_a_second_batch_waits_to_be_full_while_another_runs() -> None:
    assert run("fill") == [1, 4]  # 2 + 2 queued behind A: started together, at full size
    assert run("fill", full_second_batch=False) == [1, 2, 2]  # before: two half batches beside A


def test_queued_users_go_as_soon_as_the_running_batch_finishes() -> None:
    assert run("release") == [1, 2]  # not full, but A finished: no waiting for company that is not coming


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    def model(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if 0 in items:
            raise RuntimeError("the model broke")
        return [x * 10 for x in items]

    async def main() -> tuple[list[object], list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(model, 4, 0.0, 64)
        batcher.start()
        failed: list[object] = list(
            await asyncio.gather(batcher.submit_many([0, 1]), batcher.submit_many([2]), return_exceptions=True)
        )
        after = await asyncio.wait_for(batcher.submit_many([3]), 10)  # the slot came back: nobody hangs behind it
        assert batcher.pending == 0
        await batcher.close()
        return failed, after

    failed, after = asyncio.run(main())
    assert calls[0] == [0, 1, 2]  # one batch
    assert [type(r) for r in failed] == [RuntimeError, RuntimeError] and str(failed[0]) == "the model broke"
    assert after == [30]


def test_a_request_cancelled_while_queued_costs_no_model_work() -> None:
    async def main() -> list[int]:
        model = BlockingModel()
        batcher: MicroBatcher[int, int] = MicroBatcher(model, 4, 0.0, 64)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit_many([1]))  # holds the only worker
        await _settle()
        gone = asyncio.ensure_future(batcher.submit_many([2]))
        kept = asyncio.ensure_future(batcher.submit_many([3]))
        await _settle()
        gone.cancel()  # e.g. the client disconnected
        await _settle()
        model.gate.set()
        assert await running == [10] and await kept == [30]
        assert gone.cancelled() and batcher.pending == 0
        await batcher.close()
        return model.sizes

    assert asyncio.run(main()) == [1, 1]  # user 2 never reached the model


def test_close_answers_every_queued_user_before_the_threads_stop() -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        model = BlockingModel()
        batcher: MicroBatcher[int, int] = MicroBatcher(model, 2, 0.0, 64)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit_many([x])) for x in range(1, 6)]
        await _settle()  # user 1 runs (held); 2-5 are queued behind it
        closing = asyncio.ensure_future(batcher.close())
        await _settle()
        model.gate.set()
        await asyncio.wait_for(closing, 10)
        return list(await asyncio.gather(*waiting)), model.sizes

    results, sizes = asyncio.run(main())
    assert results == [[10], [20], [30], [40], [50]]
    assert sum(sizes) == 5 and max(sizes) <= 2


def test_under_steady_arrivals_a_batch_waits_up_to_max_wait_for_company() -> None:
    async def main() -> list[int]:
        sizes: list[int] = []

        def model(items: Sequence[int]) -> list[int]:
            sizes.append(len(items))
            return list(items)

        batcher: MicroBatcher[int, int] = MicroBatcher(model, 8, 100.0, 64)
        batcher.start()
        for x in range(15):  # back-to-back arrivals: the moving average of their gaps falls below max_wait
            await batcher.submit_many([x])
        sizes.clear()
        pair = [asyncio.ensure_future(batcher.submit_many([10]))]
        await asyncio.sleep(0.005)  # well within 100 ms: the first is still waiting for company
        pair.append(asyncio.ensure_future(batcher.submit_many([11])))
        assert await asyncio.gather(*pair) == [[10], [11]]
        await batcher.close()
        return sizes

    assert asyncio.run(main()) == [2]  # one batch: without the wait the first would have gone alone


def test_one_client_at_a_time_is_not_kept_waiting_for_company() -> None:
    async def main() -> float:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: list(items), 8, 500.0, 64)
        batcher.start()
        t0 = asyncio.get_running_loop().time()
        assert await batcher.submit_many([1]) == [1]  # the first arrival: no company is expected
        waited = asyncio.get_running_loop().time() - t0
        await batcher.close()
        return waited

    assert asyncio.run(main()) < 0.25  # far below max_wait (0.5 s)
