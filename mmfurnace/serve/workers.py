"""WholeBatchWorkers: worker processes that each run a whole batch — decode, features, model.

The fast path of ``mode: whole`` on the CPU. The main process (HTTP, the gate, the batcher)
hands a batch of raw rows to an idle worker and gets one logits row (or one error) per row
back; in between, all the work is the worker's:

    request bytes -> decode (image, wav, tokens) -> batched audio features -> collate
                  -> the full graph on a runtime (ONNX Runtime, ...) -> logits

Why one process does both (measured on 2 cores, the demo's cross-attention export): with
preprocessing in one pool and the model in the main process, every row was pickled into a
worker and its arrays pickled back, the pool's feeder/result threads and the stage threads
took turns with the event loop for the GIL (57-60 % of the main process's time), and the
pool's workers idled at 0.3 cores. Here a batch crosses once, as the requests' own file
bytes (its decoded arrays never leave the worker), over a socket pair the event loop writes
and reads without blocking and without a thread; the result is (rows, classes) float32.

Frames on the socket: 8-byte little-endian length, then a pickle. Worker -> main per batch:
``(logits or None, {row: error}, {"preprocess": s, "model": s})``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmfurnace.errors import InputError
from mmfurnace.serve.errors import NON_FINITE, NonFiniteOutput, WorkerFailed

log = logging.getLogger("mmfurnace.serve")
_HEADER = struct.Struct("<Q")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its model and preprocessing (picklable).

    export_dir / graph / runtime / options: ``RUNTIMES[runtime](export_dir, graph=graph,
    **options)``; settings: the PreprocessSettings; modalities / sequences / like: collation.
    """

    export_dir: str
    graph: str
    runtime: str
    options: dict[str, Any]
    settings: Any
    modalities: tuple[str, ...]
    sequences: frozenset[str]
    like: dict[str, np.ndarray]


# ----------------------------------------------------------------------------- worker side


class _BatchRunner:
    """Inside a worker: raw rows -> (logits, errors, timings)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from mmfurnace.export.runtimes import RUNTIMES
        from mmfurnace.serve.preprocess import Preprocessor

        self.spec = spec
        self.preprocessor = Preprocessor(spec.settings)
        self.runtime = RUNTIMES[spec.runtime](spec.export_dir, graph=spec.graph, **spec.options)
        self([{m: spec.like[m] for m in spec.modalities}])  # warm-up: kernels, allocations

    def __call__(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray | None, dict[int, Exception], dict[str, float]]:
        from mmfurnace.serve.stages import collate_whole

        t0 = time.perf_counter()
        arrays = self.preprocessor.preprocess_batch(rows)
        errors: dict[int, Exception] = {i: a for i, a in enumerate(arrays) if isinstance(a, Exception)}
        good = [a for a in arrays if not isinstance(a, Exception)]
        t1 = time.perf_counter()
        logits = None
        if good:
            feed = collate_whole(good, list(self.spec.modalities), set(self.spec.sequences), self.spec.like)
            out = np.asarray(self.runtime.run_graph(feed)["logits"], dtype=np.float32)
            keep = [i for i in range(len(rows)) if i not in errors]
            logits = np.zeros((len(rows), out.shape[1]), dtype=np.float32)
            logits[keep] = out
            bad = ~np.isfinite(out).all(axis=1)
            for k in np.flatnonzero(bad).tolist():
                errors[keep[k]] = NonFiniteOutput(NON_FINITE)
        return logits, errors, {"preprocess": t1 - t0, "model": time.perf_counter() - t1}


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _worker_main(sock: socket.socket, spec: WorkerSpec, torch_threads: int | None) -> None:
    """A worker process: build the runner, then answer batches until the socket closes."""
    import torch

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)  # this process's own setting
    try:
        runner = _BatchRunner(spec)
        ready: Any = ("ready", runner.runtime.describe())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        ready = ("failed", f"{type(exc).__name__}: {exc}")
    _send(sock, ready)
    if ready[0] != "ready":
        return
    while True:
        header = _recv_exact(sock, _HEADER.size)
        if header is None:
            return
        body = _recv_exact(sock, _HEADER.unpack(header)[0])
        if body is None:
            return
        try:
            result: Any = runner(pickle.loads(body))
        except Exception as exc:  # noqa: BLE001 - a batch's failure goes back to its rows
            result = (None, {}, {"failed": f"{type(exc).__name__}: {exc}"})
        try:
            _send(sock, result)
        except (pickle.PicklingError, TypeError, AttributeError):  # an unpicklable error object
            logits, errors, timings = result
            _send(sock, (logits, {i: InputError(str(e)) for i, e in errors.items()}, timings))


def _send(sock: socket.socket, obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(body)) + body)


# ----------------------------------------------------------------------------- main side


class _Worker:
    """One worker process and the main side of its socket (asyncio, non-blocking)."""

    def __init__(self, spec: WorkerSpec, torch_threads: int | None, index: int) -> None:
        self.spec, self.torch_threads, self.index = spec, torch_threads, index
        self.sock: socket.socket | None = None
        self.process: Any = None
        self.described: dict[str, Any] = {}

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the process and wait (blocking) until its model is loaded."""
        ours, theirs = socket.socketpair()
        context = multiprocessing.get_context("spawn")  # the server has running threads: no fork
        self.process = context.Process(target=_worker_main, args=(theirs, self.spec, self.torch_threads),
                                       name=f"mmf-whole-{self.index}", daemon=True)
        self.process.start()
        theirs.close()
        ours.settimeout(timeout_s)
        header = _recv_exact(ours, _HEADER.size)
        reply = pickle.loads(_recv_exact(ours, _HEADER.unpack(header)[0]) or b"") if header else ("failed", "exited")
        if reply[0] != "ready":
            ours.close()
            self.process.join(5)
            raise WorkerFailed(f"worker process {self.index} could not start: {reply[1]}")
        self.described = reply[1]
        ours.setblocking(False)
        self.sock = ours

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
            self.process = None

    async def run(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray | None, dict[int, Exception], dict[str, float]]:
        assert self.sock is not None, "worker not started"
        loop = asyncio.get_running_loop()
        body = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        await loop.sock_sendall(self.sock, _HEADER.pack(len(body)) + body)
        header = await self._recv(loop, _HEADER.size)
        return pickle.loads(await self._recv(loop, _HEADER.unpack(header)[0]))

    async def _recv(self, loop: asyncio.AbstractEventLoop, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = await loop.sock_recv_into(self.sock, view[got:])
            if k == 0:
                raise WorkerFailed(f"worker process {self.index} exited (code {self.process.exitcode})")
            got += k
        return bytes(buf)


class WholeBatchWorkers:
    """``workers`` processes, each running whole batches (see the module docstring).

    ``await run(rows)`` -> one result per row: logits (classes,) float32, or the row's
    exception (InputError for its input, NonFiniteOutput, WorkerFailed). At most ``workers``
    batches run at once (the engine's batcher guarantees it); a worker that dies is replaced
    and its batch's rows get WorkerFailed.
    """

    def __init__(self, spec: WorkerSpec, *, workers: int, torch_threads: int | None = 1) -> None:
        self.spec = spec
        self.workers = [_Worker(spec, torch_threads, i) for i in range(workers)]
        self._idle: list[_Worker] = []
        self.last_timings: dict[str, float] = {}

    def start(self) -> None:
        """Start every worker (blocking: each loads its model)."""
        for w in self.workers:
            w.start()
        self._idle = list(self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self._idle = []

    def describe(self) -> dict[str, Any]:
        runtime = self.workers[0].described if self.workers else {}
        return {"backend": self.spec.runtime, "device": "cpu", "graph": self.spec.graph, **runtime, "runner": "worker processes (decode + features + model per batch)",
                "workers": len(self.workers)}

    async def run(self, rows: list[dict[str, Any]]) -> list[Any]:
        """One batch on an idle worker -> per row ``(logits, timings)`` or an exception."""
        if not self._idle:
            raise WorkerFailed("no idle worker: more batches in flight than workers")
        worker = self._idle.pop()
        loop = asyncio.get_running_loop()
        try:
            logits, errors, timings = await worker.run(rows)
        except WorkerFailed as exc:
            log.error("%s; restarting it", exc)
            await self._restart(worker)
            return [exc] * len(rows)
        except BaseException:
            # Cancelled mid-batch (shutdown): the socket may hold half a frame; start afresh.
            await asyncio.shield(loop.run_in_executor(None, worker.close))
            raise
        self._idle.append(worker)
        if "failed" in timings:
            return [WorkerFailed(f"batch failed in the worker: {timings['failed']}")] * len(rows)
        return [errors[i] if i in errors else (logits[i], timings) for i in range(len(rows))]  # type: ignore[index]

    async def _restart(self, worker: _Worker) -> None:
        def restart() -> None:
            worker.close()
            worker.start()

        try:
            await asyncio.get_running_loop().run_in_executor(None, restart)
        except WorkerFailed:
            log.exception("worker %d could not be restarted", worker.index)
            return
        self._idle.append(worker)
