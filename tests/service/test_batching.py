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
