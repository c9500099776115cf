"""A profile's result: per-stage timings, the diagnosis naming the largest stage, and the
stacked-bar plot of the stages. What :mod:`mmfurnace.bench.profile` returns and writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfurnace.bench.flops import format_flops
from mmfurnace.bench.timing import percentiles

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
    frozen: list[str] = field(default_factory=list)  # modalities whose encoder trains no weight
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
            "frozen_encoders": self.frozen,
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
        if m in report.frozen and report.mode == "train":
            hint = ("it is frozen: set train.feature_cache=true so training reads its outputs, "
                    "computed once, instead of running it every step")
        elif m in report.frozen:  # a pretrained backbone: its size is not a knob
            hint = ("it is frozen: serve it INT8 (mmfurnace compress --method int8-static) or on "
                    "OpenVINO, pick a lighter encoder, or give it its own device when serving")
        else:
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
