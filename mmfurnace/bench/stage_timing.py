"""Running profiled steps: the stage timer, the model hooks that split a forward pass into
stages, the timed-step loop and the torch.profiler pass. A step is any function of
(timer, batches); :mod:`mmfurnace.bench.profile` supplies the training and inference ones."""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, record_function

from mmfurnace.bench.profile_report import ProfileReport, diagnose
from mmfurnace.bench.timing import synchronize
from mmfurnace.data.batch import Batch
from mmfurnace.errors import InputError


class StageTimer:
    """Times named stages within a step; each stage also shows up as a range in traces.

    Stages are contiguous: each starts where the previous one ended (the first at its own
    start), so the microseconds of Python between two stages -- and any time the OS gives the
    CPU to another process right there -- count in the stage that follows instead of
    vanishing. What lies before the first and after the last stage is the report's "other".
    A stage is a ``with timer.stage(name):`` block (the loop's own parts, and train_step's) or
    ends at a :meth:`mark` (module hooks inside the forward pass: see :func:`model_stages`).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: dict[str, float] = {}
        self.last_end: float | None = None
        self.depth = 0  # > 0 inside a stage block: module hooks there are part of that stage

    def start_step(self) -> None:
        self.current, self.last_end = {}, None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.last_end is None:
            self.last_end = time.perf_counter()
        self.depth += 1
        try:
            with record_function(f"mmfurnace::{name}"):
                yield
        finally:
            self.depth -= 1
        self.mark(name)

    def mark(self, name: str) -> None:
        """End stage ``name`` now: it covers the time since the previous stage ended."""
        synchronize(self.device)
        now = time.perf_counter()
        start = now if self.last_end is None else self.last_end
        self.current[name] = self.current.get(name, 0.0) + now - start
        self.last_end = now


@contextlib.contextmanager
def model_stages(model: nn.Module, timer: StageTimer) -> Iterator[None]:
    """While inside, each encoder's forward ends stage ``encoder.<modality>`` and the head's
    ends stage "fusion" (fusion + head), with a trace range around each: the model's own
    forward pass is timed in parts without being rewritten. Hooks that fire inside a stage
    block (a recomputed forward during backward, with gradient checkpointing) are ignored."""
    ranges: dict[str, Any] = {}

    def opener(name: str) -> Callable[..., None]:
        def pre(module: nn.Module, args: Any) -> None:
            if timer.depth == 0:
                ranges[name] = record_function(f"mmfurnace::{name}").__enter__()
        return pre

    def closer(name: str) -> Callable[..., None]:
        def post(module: nn.Module, args: Any, out: Any) -> None:
            if timer.depth == 0:
                timer.mark(name)
                opened = ranges.pop(name, None)
                if opened is not None:
                    opened.__exit__(None, None, None)
        return post

    handles = []
    for m, encoder in model.encoders.items():
        handles += [encoder.register_forward_pre_hook(opener(f"encoder.{m}")),
                    encoder.register_forward_hook(closer(f"encoder.{m}"))]
    handles += [model.fusion.register_forward_pre_hook(opener("fusion")),
                model.head.register_forward_hook(closer("fusion"))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Batches:
    """Endless batches from a loader: a new epoch starts when one runs out."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.it = iter(loader)

    def next(self) -> Batch:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                raise InputError("the loader yields no batches; nothing to profile") from None


StepFn = Callable[[StageTimer, Batches], Batch]


def run_steps(
    step: StepFn,
    loader: Any,
    *,
    model: nn.Module,
    mode: str,
    steps: int,
    device: torch.device,
    warmup: int,
    profile_steps: int,
    trace_path: Path | None,
    top_n: int,
    after_step: Callable[[Batch], None] | None = None,
) -> ProfileReport:
    if steps < 1 or warmup < 0 or profile_steps < 0:
        raise InputError(f"need steps >= 1, warmup >= 0, profile_steps >= 0 (got {steps}, {warmup}, {profile_steps})")
    batches, timer = Batches(loader), StageTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with model_stages(model, timer):
        stage_seconds, step_seconds, rows = _timed_steps(step, batches, timer, device, steps=steps,
                                                         warmup=warmup, after_step=after_step)
        report = ProfileReport(
            mode=mode,
            device=str(device),
            steps=steps,
            rows_per_step=rows / steps,
            stage_seconds=stage_seconds,
            step_seconds=step_seconds,
            memory={},
            num_workers=getattr(loader, "num_workers", None),
            frozen=frozen_encoders(model),
        )
        if profile_steps:
            _framework_profile(report, step, timer, batches, profile_steps, device, trace_path, top_n)
    report.memory = peak_memory(device)
    report.diagnosis = diagnose(report)
    return report


def frozen_encoders(model: nn.Module) -> list[str]:
    """Modalities whose encoder has parameters and none of them trains."""
    frozen = []
    for m, encoder in (getattr(model, "encoders", None) or {}).items():
        params = list(encoder.parameters())
        if params and not any(p.requires_grad for p in params):
            frozen.append(m)
    return sorted(frozen)


def _timed_steps(
    step: StepFn,
    batches: Batches,
    timer: StageTimer,
    device: torch.device,
    *,
    steps: int,
    warmup: int,
    after_step: Callable[[Batch], None] | None,
) -> tuple[dict[str, list[float]], list[float], int]:
    """Run ``warmup`` untimed then ``steps`` timed steps: (seconds per stage per step, seconds
    per step, rows seen)."""
    for _ in range(warmup):  # lazy init, first-call allocations, worker start-up
        timer.start_step()
        step(timer, batches)
    stage_seconds: dict[str, list[float]] = {}
    step_seconds: list[float] = []
    rows = 0
    gc_was_enabled = gc.isenabled()
    gc.collect()
    for i in range(steps):
        timer.start_step()
        # The cyclic GC runs between steps, not inside them: a collection is triggered by
        # whatever allocates next, so it would land in a random stage (or between stages).
        gc.collect(0)
        gc.disable()
        synchronize(device)
        start = time.perf_counter()
        try:
            batch = step(timer, batches)
            synchronize(device)
            step_seconds.append(time.perf_counter() - start)
        finally:
            if gc_was_enabled:
                gc.enable()
        rows += len(batch)
        for name, seconds in timer.current.items():  # a stage a step skipped counts as 0 there
            stage_seconds.setdefault(name, [0.0] * i).append(seconds)
        for values in stage_seconds.values():
            values.extend([0.0] * (i + 1 - len(values)))
        if after_step is not None:
            after_step(batch)  # outside the timed region
    return stage_seconds, step_seconds, rows


def _framework_profile(
    report: ProfileReport,
    step: StepFn,
    timer: StageTimer,
    batches: Batches,
    steps: int,
    device: torch.device,
    trace_path: Path | None,
    top_n: int,
) -> None:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            timer.start_step()
            with record_function(f"mmfurnace::{report.mode}_step"):
                step(timer, batches)
    averages = prof.key_averages()
    ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [e for e in ops if not e.key.startswith("mmfurnace::")][:top_n]
    report.top_ops = [
        {
            "name": e.key,
            "calls": int(e.count),
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "cpu_total_ms": e.cpu_time_total / 1e3,
            "self_device_ms": getattr(e, "self_device_time_total", 0.0) / 1e3,
        }
        for e in ops
    ]
    report.op_table = averages.table(sort_by="self_cpu_time_total", row_limit=top_n)
    if trace_path is not None:
        trace_path = Path(trace_path)
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_path))
        report.trace_path = str(trace_path)


def peak_memory(device: torch.device | str) -> dict[str, float | None]:
    """Peak host RSS of this process in MiB (lifetime peak, from getrusage), the current RSS
    when psutil is installed, and the peak CUDA memory allocated since the last reset."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB
    out: dict[str, float | None] = {"host_peak_rss_mib": peak_mib, "host_rss_mib": None}
    with contextlib.suppress(ImportError):
        import psutil

        out["host_rss_mib"] = psutil.Process().memory_info().rss / 2**20
    device = torch.device(device)
    if device.type == "cuda":
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
