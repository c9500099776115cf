"""Small timing helpers shared by the profiler, the benchmarks and the regression check.

Every helper times with ``time.perf_counter`` and, when given a CUDA device, synchronizes
before reading the clock so asynchronous kernels are counted where they run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued work on ``device`` (a no-op for the CPU or None)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeated(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times; seconds of each timed call."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class Timings(NamedTuple):
    """Seconds of each timed call by name: wall clock, and CPU time of this process (all its
    threads). With one compute thread, CPU time barely moves when neighbours load the
    machine -- they steal wall time, not this process's CPU time -- so it is the steadier
    measure of what the code costs; wall time is what a caller waits."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 1,
    rounds: int = 5,
    per_round: int | Mapping[str, int] = 1,
    device: torch.device | str | None = None,
) -> Timings:
    """Time several functions round-robin: each round calls every function ``per_round``
    times (an int, or name -> count so quick and slow functions get similar time), so slow
    drift of a shared machine spreads over all of them instead of penalising whichever ran
    last. Returns the wall and CPU seconds of each timed call."""
    counts = {n: per_round.get(n, 1) if isinstance(per_round, Mapping) else per_round for n in fns}
    if rounds < 1 or warmup < 0 or min(counts.values(), default=1) < 1:
        raise ValueError(f"need rounds, per_round >= 1 and warmup >= 0 (got {rounds}, {per_round}, {warmup})")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            fn = fns[name]
            for _ in range(counts[name]):
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                synchronize(device)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    return Timings(wall, cpu)


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (ValueError when empty)."""
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """{"p50": ..., "p95": ..., "p99": ...}: linear-interpolated percentiles (numpy's default)."""
    if not values:
        raise ValueError("percentiles of no values")
    ordered = sorted(float(v) for v in values)
    out = {}
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} is outside [0, 100]")
        pos = (len(ordered) - 1) * q / 100
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        out[f"p{q:g}"] = ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
    return out


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: median, p95, min, mean and the count of a list of timings in seconds."""
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": median(ms),
        "p95_ms": percentiles(ms, (95,))["p95"],
        "min_ms": min(ms),
        "mean_ms": sum(ms) / len(ms),
        "n": len(ms),
    }
