"""DynamicBatcher semantics without HTTP: dispatch on full, on the oldest item's max wait,
bounded queue -> Overloaded, exactly one outcome per item."""

from __future__ import annotations

import asyncio

import pytest

from mmfurnace.errors import ConfigError
from mmfurnace.serve.batcher import BatchStats, DynamicBatcher
from mmfurnace.serve.errors import NotReady, Overloaded


class FakeClock:
    """A clock the test moves by hand, so 'waited max_wait' never depends on real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def recorder():
    batches: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [2 * i for i in items]

    return batches, double


def test_dispatches_when_full_without_waiting() -> None:
    batches, fn = recorder()

    async def main() -> list[int]:
        # max_wait is an hour: only a full batch can be dispatched.
        async with DynamicBatcher(fn, max_batch_size=4, max_wait_ms=3_600_000, max_queue=16) as b:
            return await asyncio.wait_for(asyncio.gather(*(b.submit(i) for i in range(8))), 30)

    assert run(main()) == [2 * i for i in range(8)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_dispatches_partial_batch_when_oldest_waited_max_wait() -> None:
    batches, fn = recorder()
    clock = FakeClock()

    async def main() -> None:
        b = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=1000, max_queue=16, clock=clock)
        await b.start()
        first = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.05)
        clock.now = 0.6  # the first item has waited 600 ms of 1000
        second = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.05)
        assert batches == []  # neither full nor old enough
        clock.now = 1.0  # the OLDEST item reaches max_wait: both go, though item 2 waited 400 ms
        b._wakeup.set()  # a real clock would have woken the wait_for timeout
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [2, 4]
        await b.stop()

    run(main())
    assert batches == [[1, 2]]


def test_lone_item_goes_at_once_when_nothing_else_is_on_its_way() -> None:
    """pending() == 0: a batch forming on an empty queue leaves without waiting max_wait (an
    hour here); with rows on their way it waits for them (they join the same batch)."""
    batches, fn = recorder()
    on_the_way = [0]

    async def main() -> None:
        async with DynamicBatcher(fn, max_batch_size=8, max_wait_ms=3_600_000, max_queue=16,
                                  pending=lambda: on_the_way[0]) as b:
            assert await asyncio.wait_for(b.submit(1), 10) == 2
            on_the_way[0] = 1  # one more admitted upstream, not yet submitted
            first = asyncio.create_task(b.submit(2))
            await asyncio.sleep(0.05)
            assert batches == [[1]]  # held for the row on its way
            on_the_way[0] = 0
            second = asyncio.create_task(b.submit(3))
            assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [4, 6]

    run(main())
    assert batches == [[1], [2, 3]]


def test_max_wait_zero_dispatches_what_is_queued() -> None:
    batches, fn = recorder()

    async def main() -> None:
        async with DynamicBatcher(fn, max_batch_size=8, max_wait_ms=0, max_queue=16) as b:
            assert await b.submit(5) == 10

    run(main())
    assert batches == [[5]]


def test_concurrent_submissions_are_batched_and_counted() -> None:
    seen: list[BatchStats] = []
    gate = asyncio.Event

    async def main() -> None:
        release = gate()

        async def slow(items: list[int]) -> list[int]:
            await release.wait()
            return items

        b = DynamicBatcher(slow, max_batch_size=16, max_wait_ms=20, max_queue=64, on_batch=seen.append)
        await b.start()
        first = asyncio.create_task(b.submit(-1))  # occupies the only run slot
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(b.submit(i)) for i in range(10)]
        await asyncio.sleep(0.05)
        assert b.depth == 10  # queued behind the running batch
        release.set()
        assert await asyncio.wait_for(asyncio.gather(first, *rest), 10) == [-1, *range(10)]
        await b.stop()

    run(main())
    assert [s.size for s in seen] == [1, 10]
    assert all(w >= 0 for s in seen for w in s.waits_s)


def test_full_queue_raises_overloaded_immediately_and_every_item_is_answered() -> None:
    async def main() -> tuple[list[object], int]:
        release = asyncio.Event()

        async def slow(items: list[int]) -> list[int]:
            await release.wait()
            return items

        b = DynamicBatcher(slow, max_batch_size=2, max_wait_ms=0, max_queue=4, retry_after_s=3)
        await b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(2)]
        await asyncio.sleep(0.05)  # the first batch of 2 is now running
        tasks += [asyncio.create_task(b.submit(i)) for i in range(2, 20)]
        await asyncio.sleep(0.05)
        overloaded = sum(t.done() and isinstance(t.exception(), Overloaded) for t in tasks)
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await b.stop()
        return results, overloaded

    results, shed_early = run(main())
    ok = [r for r in results if isinstance(r, int)]
    shed = [r for r in results if isinstance(r, Overloaded)]
    assert len(ok) + len(shed) == 20  # exactly one outcome each
    assert shed_early == len(shed) > 0  # shed at submit time, not after waiting
    assert len(ok) == 2 + 4  # one running batch + a full queue
    assert all(r.retry_after_s == 3 for r in shed)


def test_batch_exception_fails_every_item_and_per_item_exceptions_fail_one() -> None:
    async def boom(items: list[int]) -> list[int]:
        raise RuntimeError("kaput")

    async def picky(items: list[int]) -> list[object]:
        return [ValueError(f"bad {i}") if i % 2 else i for i in items]

    async def main() -> tuple[list[object], list[object]]:
        async with DynamicBatcher(boom, max_batch_size=4, max_wait_ms=5, max_queue=8) as b:
            a = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        async with DynamicBatcher(picky, max_batch_size=4, max_wait_ms=5, max_queue=8) as b:
            c = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
        return a, c

    a, c = run(main())
    assert all(isinstance(r, RuntimeError) for r in a)
    assert c[0] == 0
    assert c[2] == 2
    assert isinstance(c[1], ValueError)
    assert isinstance(c[3], ValueError)


def test_cancelled_caller_is_skipped_and_stop_answers_queued_items() -> None:
    batches, fn = recorder()

    async def main() -> object:
        release = asyncio.Event()

        async def gated(items: list[int]) -> list[int]:
            await release.wait()
            return await fn(items)

        b = DynamicBatcher(gated, max_batch_size=1, max_wait_ms=0, max_queue=8)
        await b.start()
        running = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit(1), 0.05)  # times out while queued
        queued = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.02)
        release.set()
        await running
        await queued
        late = asyncio.create_task(b.submit(3))
        await asyncio.sleep(0)
        await b.stop()
        return await asyncio.gather(late, return_exceptions=True)

    (late,) = run(main())
    assert [0] in batches
    assert [2] in batches
    assert [1] not in batches
    assert late == 6 or isinstance(late, NotReady)


def test_submit_before_start_is_not_ready() -> None:
    _, fn = recorder()

    async def main() -> None:
        b = DynamicBatcher(fn, max_batch_size=2, max_wait_ms=1, max_queue=2)
        with pytest.raises(NotReady):
            await b.submit(1)

    run(main())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"max_queue": 1, "max_batch_size": 4},
        {"max_inflight": 0},
    ],
)
def test_bad_settings_rejected_at_construction(kwargs: dict) -> None:
    _, fn = recorder()
    settings = {"max_batch_size": 4, "max_wait_ms": 1.0, "max_queue": 8, **kwargs}
    with pytest.raises(ConfigError):
        DynamicBatcher(fn, **settings)
