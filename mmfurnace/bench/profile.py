"""Where a step's time goes: per-stage timing, a torch.profiler trace, and a diagnosis.

A training step is the recipe's own :func:`~mmfurnace.train.recipe.train_step`, split into
stages -- data (waiting on the loader), h2d (host -> device copy), ``encoder.<modality>`` and
fusion (fusion + head), timed by hooks on those modules, then loss (consistency projections +
the loss), backward and optimizer, timed by train_step's ``stage`` hook -- and an inference step
into data, h2d, the encoders and fusion. Stage boundaries are read with
``time.perf_counter`` (after ``torch.cuda.synchronize`` on a GPU, so kernels are counted in the
stage that launched them); stages are contiguous, each starting where the previous ended. The
whole step is timed on its own clock around all of them: what the stages do not cover is
reported as "other", never silently dropped.

Stage timings come from plain steps; torch.profiler then records a few more steps (its
overhead would distort the stage times) for the operator table and the Chrome/Perfetto trace.
Python's cyclic garbage collector is paused inside timed steps and run between them, so its
pauses are not charged to whichever stage happened to allocate when it triggered.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, record_function
from torch.utils.data import Dataset

from mmfurnace.bench.flops import count_flops, flops_summary, format_flops, measure_peak_flops
from mmfurnace.bench.timing import percentiles, synchronize
from mmfurnace.data.batch import Batch, Sample
from mmfurnace.errors import InputError

OTHER = "other"
COMPUTE_EXCLUDES = ("data",)  # what the compute device waits on, not compute itself


@dataclass
class ProfileReport:
    """Per-stage timings of ``steps`` profiled steps (mode "train" or "inference").

    stage_seconds: stage -> seconds in each step, stages in run order.
    step_seconds:  each step's total, measured independently around the whole step.
    memory:        peak host RSS (MiB, process lifetime) and, on CUDA, peak allocated (MiB).
    top_ops:       the operators with the most self CPU time in the profiled steps.
    flops:         (inference) FLOPs per step, achieved FLOP/s, measured peak, utilization.
    """

    mode: str
    device: str
    steps: int
    rows_per_step: float
    stage_seconds: dict[str, list[float]]
    step_seconds: list[float]
    memory: dict[str, float | None]
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    op_table: str = ""
    trace_path: str | None = None
    flops: dict[str, Any] | None = None
    num_workers: int | None = None
    diagnosis: str = ""

    @property
    def total_ms(self) -> float:
        return 1e3 * sum(self.step_seconds) / len(self.step_seconds)

    def stage_ms(self) -> dict[str, float]:
        """Mean ms per stage, plus "other" = measured step total - sum of the stages."""
        ms = {s: 1e3 * sum(v) / len(v) for s, v in self.stage_seconds.items()}
        ms[OTHER] = self.total_ms - sum(ms.values())
        return ms

    @property
    def data_wait_share(self) -> float:
        """Share of the step the compute device spent waiting for the next batch."""
        return self.stage_ms().get("data", 0.0) / self.total_ms if self.total_ms > 0 else 0.0

    @property
    def compute_ms(self) -> float:
        ms = self.stage_ms()
        return self.total_ms - sum(ms.get(s, 0.0) for s in COMPUTE_EXCLUDES)

    def to_dict(self) -> dict[str, Any]:
        ms, total = self.stage_ms(), self.total_ms
        stages = {}
        for name, value in ms.items():
            per_step = self.stage_seconds.get(name)
            stages[name] = {
                "mean_ms": value,
                "share": value / total if total > 0 else 0.0,
                "p95_ms": None if per_step is None else 1e3 * percentiles(per_step, (95,))["p95"],
            }
        return {
            "mode": self.mode,
            "device": self.device,
            "steps": self.steps,
            "rows_per_step": self.rows_per_step,
            "num_workers": self.num_workers,
            "step_ms": {"mean": total, **{k: 1e3 * v for k, v in percentiles(self.step_seconds).items()}},
            "stages": stages,
            "stage_sum_ms": total - ms[OTHER],
            "other_ms": ms[OTHER],
            "data_wait_share": self.data_wait_share,
            "samples_per_s": self.rows_per_step / (total / 1e3) if total > 0 else None,
            "memory": self.memory,
            "flops": self.flops,
            "top_ops": self.top_ops,
            "trace_path": self.trace_path,
            "diagnosis": self.diagnosis,
            "per_step_ms": {
                "total": [1e3 * s for s in self.step_seconds],
                **{k: [1e3 * s for s in v] for k, v in self.stage_seconds.items()},
            },
        }

    def to_markdown(self) -> str:
        d = self.to_dict()
        lines = [
            f"## {self.mode} profile ({self.device}, {self.steps} steps, {self.rows_per_step:.0f} rows/step)",
            "",
            f"**Diagnosis:** {self.diagnosis}",
            "",
            "| stage | mean ms | share of step | p95 ms |",
            "|---|---:|---:|---:|",
        ]
        for name, s in d["stages"].items():
            p95 = "-" if s["p95_ms"] is None else f"{s['p95_ms']:.2f}"
            lines.append(f"| {stage_label(name)} | {s['mean_ms']:.2f} | {s['share']:.1%} | {p95} |")
        lines.append(f"| **step (measured)** | **{d['step_ms']['mean']:.2f}** | 100% | {d['step_ms']['p95']:.2f} |")
        lines += ["", f"- data wait: {d['data_wait_share']:.1%} of the step",
                  f"- throughput: {d['samples_per_s']:.1f} samples/s" if d["samples_per_s"] else "- throughput: -"]
        mem = ", ".join(f"{k} {v:.0f} MiB" for k, v in self.memory.items() if v is not None)
        lines.append(f"- memory: {mem or '-'}")
        if self.flops:
            f = self.flops
            util = "" if f["utilization"] is None else (
                f" = {f['utilization']:.1%} of the measured peak {format_flops(f['peak_flops_per_s'])}FLOP/s")
            lines.append(f"- compute: {format_flops(f['flops_per_step'])}FLOP per step, "
                         f"{format_flops(f['achieved_flops_per_s'])}FLOP/s achieved{util}")
        if self.trace_path:
            lines.append(f"- trace: `{self.trace_path}` (open in https://ui.perfetto.dev or chrome://tracing)")
        if self.top_ops:
            lines += ["", "| operator | calls | self CPU ms | CPU total ms |", "|---|---:|---:|---:|"]
            lines += [f"| `{o['name']}` | {o['calls']} | {o['self_cpu_ms']:.2f} | {o['cpu_total_ms']:.2f} |"
                      for o in self.top_ops]
        return "\n".join(lines) + "\n"


def stage_label(stage: str) -> str:
    """A stage's name as a person reads it ("encoder.text" -> "the text encoder")."""
    if stage.startswith("encoder."):
        return f"the {stage.split('.', 1)[1]} encoder"
    return {"data": "data loading", "h2d": "host→device copy", "fusion": "fusion + head",
            "loss": "the loss", "backward": "backward", "optimizer": "the optimizer step",
            OTHER: "untimed glue"}.get(stage, stage)


def diagnose(report: ProfileReport) -> str:
    """One sentence naming the largest stage and a concrete thing to try."""
    ms, total = report.stage_ms(), report.total_ms
    largest = max(ms, key=lambda s: ms[s])
    if largest == "data":
        workers = report.num_workers
        more = "raise data.num_workers" if workers is None else f"raise data.num_workers (now {workers})"
        return (f"data loading is {ms['data'] / total:.0%} of the step: {more} or use the packed "
                f"cache (data.dataset=packed, built by `mmfurnace data build`)")
    share = ms[largest] / max(report.compute_ms, 1e-12)
    label = stage_label(largest)
    if largest.startswith("encoder."):
        m = largest.split(".", 1)[1]
        hint = (f"shrink it (model.encoders.{m}.dim / .layers), pick a lighter encoder, or give it "
                "its own device when serving")
    else:
        hint = {
            "h2d": "set data.pin_memory=true so copies run non_blocking, or ship smaller dtypes",
            "fusion": "try a cheaper fusion (model.fusion=late or early) or a smaller model.hidden_dim",
            "loss": "the consistency term runs over every modality pair: lower train.alpha or use "
                    "train.consistency=mse instead of infonce",
            "backward": "train in mixed precision (train.precision=bf16) and leave "
                        "train.grad_checkpointing off unless memory-bound (it recomputes the forward)",
            "optimizer": "use larger batches (data.batch_size) so the update is paid less often per sample",
            OTHER: "it is Python overhead between ops; larger batches (data.batch_size) amortize it",
        }.get(largest, "look at the operator table and the trace")
    return f"{label} is {share:.0%} of compute: {hint}"


# --------------------------------------------------------------------------- running


class _StageTimer:
    """Times named stages within a step; each stage also shows up as a range in traces.

    Stages are contiguous: each starts where the previous one ended (the first at its own
    start), so the microseconds of Python between two stages -- and any time the OS gives the
    CPU to another process right there -- count in the stage that follows instead of
    vanishing. What lies before the first and after the last stage is the report's "other".
    A stage is a ``with timer.stage(name):`` block (the loop's own parts, and train_step's) or
    ends at a :meth:`mark` (module hooks inside the forward pass: see :func:`_model_stages`).
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
def _model_stages(model: nn.Module, timer: _StageTimer) -> Iterator[None]:
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


class _Batches:
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


StepFn = Callable[[_StageTimer, _Batches], Batch]


def _run(
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
    batches, timer = _Batches(loader), _StageTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _model_stages(model, timer):
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
        )
        if profile_steps:
            _framework_profile(report, step, timer, batches, profile_steps, device, trace_path, top_n)
    report.memory = peak_memory(device)
    report.diagnosis = diagnose(report)
    return report


def _timed_steps(
    step: StepFn,
    batches: _Batches,
    timer: _StageTimer,
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
    timer: _StageTimer,
    batches: _Batches,
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


def _move(batch: Batch, device: torch.device, dtype: torch.dtype = torch.float32) -> Batch:
    """``batch`` on ``device``, float inputs in ``dtype`` (an FP16/BF16 model's)."""
    pinned = device.type == "cuda" and all(t.is_pinned() for t in batch.inputs.values())
    batch = batch.to(device, non_blocking=pinned)
    if dtype == torch.float32:
        return batch
    inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
    return Batch(inputs=inputs, padding=batch.padding, present=batch.present, labels=batch.labels)


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def profile_training(
    model: nn.Module,
    loader: Any,
    *,
    steps: int = 20,
    device: torch.device | str = "cpu",
    trace_path: Path | None = None,
    warmup: int = 2,
    profile_steps: int = 3,
    top_n: int = 15,
    train: Any | None = None,
) -> ProfileReport:
    """Profile ``steps`` training steps of ``model`` (a MultimodalClassifier) on ``loader``
    (yielding Batches). Each step is the recipe's own
    :func:`~mmfurnace.train.recipe.train_step` with the settings of ``train`` (a TrainConfig;
    default: TrainConfig()): AdamW and its warmup/cosine schedule, the task + alpha *
    consistency + beta * regulariser loss, modality dropout, clipping, and the precision --
    a bf16 run is profiled under bf16 autocast, an fp16 one with its GradScaler. The model is
    trained in place (pass a copy to keep its weights) and left in the mode it came in."""
    from mmfurnace.train.config import TrainConfig
    from mmfurnace.train.precision import check_precision, make_scaler
    from mmfurnace.train.recipe import train_step
    from mmfurnace.train.schedule import build_optimizer, warmup_cosine, warmup_steps_for

    tc = train if train is not None else TrainConfig()
    device = torch.device(device)
    check_precision(tc.precision, device)
    model.to(device)
    was_training = model.training
    model.train()
    per_epoch = len(loader) if hasattr(loader, "__len__") else warmup + steps + profile_steps
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps_for(
        tc.warmup_epochs, steps_per_epoch=per_epoch, epochs=tc.epochs),
                              total_steps=max(tc.epochs * per_epoch, warmup + steps + profile_steps))
    scaler = make_scaler(tc.precision, device)
    dropout_rng = torch.Generator().manual_seed(tc.seed)
    dtype = _float_dtype(model)

    def step(timer: _StageTimer, batches: _Batches) -> Batch:
        with timer.stage("data"):
            batch = batches.next()
        with timer.stage("h2d"):
            batch = _move(batch, device, dtype)
        train_step(model, batch, tc=tc, multilabel=bool(model.multilabel), optimizer=optimizer,
                   scaler=scaler, scheduler=scheduler, dropout_rng=dropout_rng, device=device,
                   stage=timer.stage)
        return batch

    try:
        return _run(step, loader, model=model, mode="train", steps=steps, device=device, warmup=warmup,
                    profile_steps=profile_steps, trace_path=trace_path, top_n=top_n)
    finally:
        model.train(was_training)


def profile_inference(
    model: nn.Module,
    loader: Any,
    *,
    steps: int = 20,
    device: torch.device | str = "cpu",
    trace_path: Path | None = None,
    warmup: int = 2,
    profile_steps: int = 3,
    top_n: int = 15,
    peak_flops: float | None = None,
    count: bool = True,
) -> ProfileReport:
    """Profile ``steps`` inference steps (eval mode, no grad): data, h2d, each encoder,
    fusion + head. With ``count``, the FLOPs of every timed batch are counted (outside the
    timed region) and reported as achieved FLOP/s over the encoder + fusion time, and as a
    fraction of ``peak_flops`` (see :func:`mmfurnace.bench.flops.measure_peak_flops`)."""
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    flops = [0]
    dtype = _float_dtype(model)

    def step(timer: _StageTimer, batches: _Batches) -> Batch:
        with timer.stage("data"):
            batch = batches.next()
        with timer.stage("h2d"):
            batch = _move(batch, device, dtype)
        with torch.no_grad():  # the serving path: encoders, then fusion + head (timed by hooks)
            features = {m: model.encode(m, batch.inputs[m], batch.padding.get(m), batch.present.get(m))
                        for m in model.modalities if m in batch.inputs}
            model.fuse(features, batch.present)
        return batch

    def add_flops(batch: Batch) -> None:
        flops[0] += count_flops(model, batch)["flops"]["total"]

    try:
        report = _run(step, loader, model=model, mode="inference", steps=steps, device=device, warmup=warmup,
                      profile_steps=profile_steps, trace_path=trace_path, top_n=top_n,
                      after_step=add_flops if count else None)
    finally:
        model.train(was_training)
    if count:
        ms = report.stage_ms()
        compute_s = sum(v for k, v in ms.items() if k.startswith("encoder.") or k == "fusion") / 1e3
        report.flops = flops_summary(flops[0] / steps, compute_s, peak_flops)
    return report


# --------------------------------------------------------------------------- outputs


def plot_stages(reports: Sequence[ProfileReport], path: str | Path) -> Path:
    """A PNG of stacked bars (ms per stage) for each report: the mean step, then each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(reports), figsize=(6.5 * len(reports), 4.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, report in zip(axes[0], reports, strict=True):
        names = [*report.stage_seconds, OTHER]
        per_step = {n: [1e3 * s for s in report.stage_seconds[n]] for n in report.stage_seconds}
        per_step[OTHER] = [1e3 * t - sum(per_step[n][i] for n in report.stage_seconds)
                           for i, t in enumerate(report.step_seconds)]
        mean = report.stage_ms()
        labels = ["mean", *[str(i + 1) for i in range(report.steps)]]
        bottom = [0.0] * len(labels)
        for k, name in enumerate(names):
            values = [mean[name], *per_step[name]]
            values = [max(v, 0.0) for v in values]
            ax.bar(labels, values, bottom=bottom, color=cmap(k % 20), label=stage_label(name))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_xlabel("step")
        ax.set_ylabel("ms")
        ax.set_title(f"{report.mode} on {report.device}: {report.total_ms:.1f} ms/step", fontsize=10)
        if len(labels) > 12:
            ax.set_xticks(range(0, len(labels), max(1, len(labels) // 10)))
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class SyntheticDataset(Dataset):
    """``size`` random Samples shaped for ``info`` (every modality present); sequence
    modalities get ``lengths[modality]`` steps. For profiling without the real data."""

    def __init__(self, info: Any, size: int, *, lengths: Mapping[str, int], modalities: Sequence[str] | None = None) -> None:
        self.info = info
        self.size = size
        self.modalities = sorted(modalities or info.modalities)
        self.lengths = dict(lengths)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        g = torch.Generator().manual_seed(i)
        inputs = {}
        for m in self.modalities:
            shape = [self.lengths.get(m, 16) if d is None else d for d in self.info.input_shapes[m]]
            if self.info.input_dtypes.get(m, "float32").startswith("int"):
                inputs[m] = torch.randint(1, max(int(self.info.vocab_size or 2), 2), shape, generator=g)
            else:
                inputs[m] = torch.randn(shape, generator=g)
        if self.info.multilabel:
            label = (torch.rand(self.info.num_classes, generator=g) > 0.5).float()
        else:
            label = torch.tensor(i % self.info.num_classes)
        return Sample(inputs=inputs, label=label)


def profile_checkpoint(
    checkpoint_dir_or_export: str | Path,
    *,
    data_cfg_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    steps: int = 20,
    out_dir: str | Path = "runs/profile",
    device: str = "cpu",
    mode: str = "both",
    split: str = "valid",
    synthetic: bool = False,
    warmup: int = 2,
    profile_steps: int = 3,
    top_n: int = 15,
    peak_size: int = 2048,
) -> dict[str, Any]:
    """Profile a training checkpoint or an export directory on its data; what
    ``mmfurnace profile CHECKPOINT`` runs.

    data_cfg_overrides: changes to the data section, as {"num_workers": 2} or
    ["num_workers=2", "root=data/digits-av"]. mode: "inference", "train" or "both" (training
    steps run on a copy of the model). synthetic: random inputs of the right shapes instead
    of the dataset (no data needed). Writes to ``out_dir``: profile.json, profile.md,
    stages.png and trace.json (the training trace when mode is "both"; the inference one is
    then trace_inference.json). Returns what profile.json holds.
    """
    from mmfurnace.bench.machine import machine_info
    from mmfurnace.data.loader import make_loader

    if mode not in ("inference", "train", "both"):
        raise InputError(f"mode {mode!r} is unknown; use inference, train or both")
    out_dir = Path(out_dir)
    model, info, data_cfg, train_cfg, source = _load(Path(checkpoint_dir_or_export), device)
    data_cfg = _override(data_cfg, data_cfg_overrides)
    modalities = list(model.modalities)
    if synthetic:
        frames = int((data_cfg.audio.max_seconds or 2.0) * data_cfg.audio.sample_rate) // data_cfg.audio.hop_length + 1
        dataset = SyntheticDataset(info, data_cfg.batch_size * 8, lengths={"audio": frames, "text": data_cfg.text.max_length},
                                   modalities=modalities)
    else:
        from mmfurnace.data.datasets import build_dataset
        from mmfurnace.data.info import check_same_data

        dataset = build_dataset(data_cfg, split)
        check_same_data(info, dataset.info, where=f"the {split} split at {data_cfg.root}")
    pin = data_cfg.pin_memory if data_cfg.pin_memory is not None else torch.device(device).type == "cuda"
    loader = make_loader(dataset, modalities=modalities, batch_size=data_cfg.batch_size, shuffle=True,
                         num_workers=data_cfg.num_workers, prefetch_factor=data_cfg.prefetch_factor, pin_memory=pin)
    common = dict(steps=steps, device=device, warmup=warmup, profile_steps=profile_steps, top_n=top_n)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[ProfileReport] = []
    if mode in ("inference", "both"):
        peak = measure_peak_flops(device, size=peak_size)
        trace = out_dir / ("trace_inference.json" if mode == "both" else "trace.json")
        reports.append(profile_inference(model, loader, trace_path=trace, peak_flops=peak, **common))
    if mode in ("train", "both"):
        # trained as the recipe trains: FP32 weights (an FP16/BF16 checkpoint's are upcast),
        # under the autocast of the precision the run trained in
        reports.append(profile_training(copy.deepcopy(model).float(), loader, trace_path=out_dir / "trace.json",
                                        train=train_cfg, **common))
    result = {
        "source": source,
        "machine": machine_info(),
        "settings": {"steps": steps, "warmup": warmup, "profile_steps": profile_steps, "device": device,
                     "split": None if synthetic else split, "synthetic": synthetic,
                     "data": data_cfg.model_dump(mode="json")},
        **{r.mode: r.to_dict() for r in reports},
        "files": {},
    }
    plot_stages(reports, out_dir / "stages.png")
    md = "\n".join([f"# Profile of `{source}`", "", *[r.to_markdown() for r in reports]])
    (out_dir / "profile.md").write_text(md, encoding="utf-8")
    written = [out_dir / n for n in ("profile.json", "profile.md", "stages.png")]
    written += [Path(r.trace_path) for r in reports if r.trace_path]
    result["files"] = {p.name: str(p) for p in written}
    (out_dir / "profile.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def _load(path: Path, device: str) -> tuple[nn.Module, Any, Any, Any, str]:
    """(model, DatasetInfo, DataConfig, TrainConfig, description) of a checkpoint or export."""
    from mmfurnace.data.config import DataConfig
    from mmfurnace.train.config import TrainConfig

    if (path / "export.json").is_file():
        from mmfurnace.export.runtimes.torch_common import load_eager_model
        from mmfurnace.export.spec import load_spec

        spec = load_spec(path)
        prep = {k: v for k, v in (spec.preprocessing or {}).items() if k in DataConfig.model_fields}
        data = DataConfig.model_validate({**prep, "modalities": list(spec.modalities)})
        return load_eager_model(spec).to(device), spec.info, data, TrainConfig(), f"export {path}"
    from mmfurnace.train.checkpoint import load_model

    model, meta = load_model(path, device=device)
    return model, meta.info, meta.config.data, meta.config.train, f"checkpoint {path}"


def _override(cfg: Any, overrides: Mapping[str, Any] | Sequence[str] | None) -> Any:
    from mmfurnace.typed_config import apply_overrides, parse

    if not overrides:
        return cfg
    raw = cfg.model_dump(mode="json")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            node = raw
            *parents, last = str(key).removeprefix("data.").split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    else:
        raw = apply_overrides(raw, [o.removeprefix("data.") for o in overrides])
    return parse(type(cfg), raw, source="data overrides")
