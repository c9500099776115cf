"""DynamicBatcher: Triton-style dynamic batching of single items over an async batch function.

Semantics (those of Triton's dynamic batcher):
  * a batch is dispatched as soon as it holds ``max_batch_size`` items, or as soon as the
    OLDEST item in it has waited ``max_wait_ms`` — whichever comes first — or (given
    ``pending``) as soon as the queue is empty and no other item is on its way: waiting
    longer could only add latency (a lone request is not held for max_wait_ms);
  * the queue is bounded: ``submit`` on a full queue raises :class:`Overloaded` at once,
    it never blocks (the HTTP layer turns that into 503 + Retry-After);
  * at most ``max_inflight`` batches run at once; while they run, the queue keeps filling,
    so the next batch is ready the moment a slot frees (and with ``max_inflight=2`` the next
    batch is collated while the current one computes);
  * every submitted item gets exactly one outcome: its result, the batch's exception (or its
    own, when the batch function returns an exception in its slot), or cancellation of the
    caller's own wait (a timed-out caller's item is skipped if it has not been dispatched).
    :meth:`stop` fails every queued item with :class:`NotReady` instead of dropping it.

Runs on one asyncio event loop and needs no HTTP: ``await batcher.submit(x)``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mmfurnace.errors import ConfigError
from mmfurnace.serve.errors import NotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass(frozen=True)
class BatchStats:
    """What one dispatched batch looked like: its size, each item's wait, its run time (s),
    when it finished (the batcher's clock) and how many items were queued at that moment."""

    name: str
    size: int
    waits_s: tuple[float, ...]
    run_s: float
    done_at: float = 0.0
    waiting: int = 0


@dataclass(frozen=True)
class Timed(Generic[R]):
    """An item's result with its queue wait, its batch's run time (s) and the batch size."""

    value: R
    queued_s: float
    run_s: float
    batch_size: int


@dataclass
class _Item(Generic[T]):
    payload: T
    future: asyncio.Future
    enqueued: float


class DynamicBatcher(Generic[T, R]):
    """Collects items submitted one at a time into batches for ``run_batch``.

    run_batch: async (list of payloads) -> one result per payload, in order; an exception
        instance in a slot fails only that item; raising fails the whole batch.
    on_batch:  called with :class:`BatchStats` after every batch (metrics hook).
    pending:   optional; () -> items on their way to this batcher (admitted upstream, not yet
        submitted); 0 while a batch forms on an empty queue dispatches it at once.
    """

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        max_inflight: int = 1,
        name: str = "batcher",
        retry_after_s: float = 1.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        pending: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size <= 0:
            raise ConfigError(f"{name}: max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not max_wait_ms >= 0:
            raise ConfigError(f"{name}: max_wait_ms must be >= 0, got {max_wait_ms!r}")
        if not isinstance(max_queue, int) or max_queue < max_batch_size:
            raise ConfigError(
                f"{name}: max_queue must be an integer >= max_batch_size ({max_batch_size}), got {max_queue!r}"
            )
        if not isinstance(max_inflight, int) or max_inflight <= 0:
            raise ConfigError(f"{name}: max_inflight must be a positive integer, got {max_inflight!r}")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._pending = pending
        self._clock = clock
        self._items: deque[_Item[T]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.batches_dispatched = 0
        self.forming = 0  # items taken into the batch being formed
        self.running_rows = 0  # items in dispatched batches not yet answered

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def depth(self) -> int:
        """Items waiting (not yet dispatched)."""
        return len(self._items)

    async def start(self) -> None:
        """Start the collecting loop on the running event loop (idempotent)."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_inflight)
        self._loop_task = asyncio.create_task(self._collect(), name=f"{self.name}-batcher")

    async def stop(self) -> None:
        """Stop collecting; let running batches finish; fail queued items with NotReady."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady(f"{self.name}: server is shutting down"))

    async def __aenter__(self) -> DynamicBatcher[T, R]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- submitting -----------------------------------------------------------------------

    async def submit(self, payload: T) -> R:
        """Queue one item and wait for its result. Raises Overloaded when the queue is full."""
        return (await self.submit_timed(payload)).value

    async def submit_timed(self, payload: T) -> Timed[R]:
        """Like :meth:`submit`, with the item's queue wait, batch run time and batch size."""
        # If the caller is cancelled (its timeout), the future is cancelled with it and the
        # collecting loop skips the item.
        return await self.enqueue(payload)

    def enqueue(self, payload: T) -> asyncio.Future:
        """Queue one item now; return the future of its :class:`Timed` result. Raises
        Overloaded (queue full) or NotReady at once. Cancelling the future withdraws the item
        if it has not been dispatched. (Several futures can be awaited with one gather,
        without a task per item.)"""
        if not self.running:
            raise NotReady(f"{self.name}: batcher is not running")
        if len(self._items) >= self.max_queue:
            raise Overloaded(
                f"{self.name}: queue is full ({self.max_queue} waiting); retry later",
                retry_after_s=self.retry_after_s,
            )
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(payload, future, self._clock()))
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    # -- collecting and dispatching ---------------------------------------------------------

    async def _collect(self) -> None:
        assert self._slots is not None
        while True:
            # Take a run slot first: while every slot is busy the queue keeps filling, so the
            # batch formed when one frees is as full as the waiting allows.
            await self._slots.acquire()
            try:
                batch = await self._form_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _next_live(self) -> _Item[T] | None:
        """Pop the oldest item whose caller still waits, or None when the queue is empty."""
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                return item
        return None

    async def _form_batch(self) -> list[_Item[T]]:
        assert self._wakeup is not None
        first = self._next_live()
        while first is None:
            self._wakeup.clear()
            await self._wakeup.wait()
            first = self._next_live()
        batch = [first]
        deadline = first.enqueued + self.max_wait_s
        try:
            while len(batch) < self.max_batch_size:
                self.forming = len(batch)
                item = self._next_live()
                if item is not None:
                    batch.append(item)
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0 or (self._pending is not None and self._pending() <= 0):
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            self.forming = 0
        return batch

    async def _dispatch(self, batch: list[_Item[T]]) -> None:
        assert self._slots is not None
        started = self._clock()
        waits = tuple(started - item.enqueued for item in batch)
        self.running_rows += len(batch)
        try:
            try:
                results = await self._run_batch([item.payload for item in batch])
                if len(results) != len(batch):
                    raise AssertionError(
                        f"{self.name}: batch function returned {len(results)} results for {len(batch)} items"
                    )
            except Exception as exc:  # noqa: BLE001 - the batch's error goes to every caller
                results = [exc] * len(batch)
            done_at = self._clock()
            run_s = done_at - started
            for item, wait, result in zip(batch, waits, results, strict=True):
                if item.future.done():  # caller gave up (timeout) while the batch ran
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(Timed(result, wait, run_s, len(batch)))
            self.batches_dispatched += 1
            if self._on_batch is not None:
                self._on_batch(BatchStats(self.name, len(batch), waits, run_s, done_at, len(self._items)))
        finally:
            # Cancelled mid-batch (shutdown): no caller may be left waiting forever.
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(NotReady(f"{self.name}: batch was cancelled"))
            self.running_rows -= len(batch)
            self._slots.release()
