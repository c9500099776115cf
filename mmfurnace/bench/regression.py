"""Benchmark baselines and the regression check.

A benchmark result is a JSON object::

    {"suite": "quick", "machine": {...}, "settings": {...},
     "reference": {"ref_matmul_ms": 3.1, "ref_matmul_cpu_ms": 3.0, ...},  # same run, median ms
     "metrics": {"eager_b32_samples_per_s": 812.0, "eager_b32_samples_per_cpu_s": 905.0,
                 "eager_b1_latency_ms": 2.4, ...},
     "directions": {"some_metric": "higher"}}                             # optional overrides

:func:`compare` judges each metric of a current result against a baseline as a *slowdown
factor* (> 1 is worse), direction-aware: higher is better for throughput-like names
(``*_per_s``, ``*_per_cpu_s``, ``*throughput*``, ``*flops*``, ``*speedup*``), lower is better
for times (``*_ms``, ``*_s``, ``*_seconds``, ``*latency*``, sizes in bytes). To cancel the
machine's speed and load, each metric is first normalized by the reference workload: both
results timed the same fixed workloads in their own run, and the median over them of
``current_ref / baseline_ref`` says how much slower this machine is right now. CPU-time
metrics (a ``cpu`` word in the name) are normalized by the CPU-time references, wall-clock
ones by the wall-clock references. A metric regresses when its normalized slowdown exceeds
``1 + tolerance``; metrics outside ``gate`` are shown but never fail the check.

    python -m mmfurnace.bench.regression CURRENT.json BASELINE.json [--tolerance 0.15]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfurnace.bench.timing import median, time_interleaved
from mmfurnace.errors import InputError

HIGHER, LOWER = "higher", "lower"
WALL, CPU = "wall", "cpu"
# Checked in order: "_per_s" must win over "_s".
_HIGHER_MARKS = ("_per_s", "_per_cpu_s", "per_sec", "throughput", "flops", "speedup", "_qps", "utilization")
_LOWER_MARKS = ("_ms", "_us", "_ns", "_s", "_sec", "_seconds", "_bytes", "_mib", "_mb")
# Sizes and ratios do not scale with the machine's speed: never normalized.
_SPEED_INDEPENDENT = ("_bytes", "_mib", "_mb", "utilization")


def metric_direction(name: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """"higher" or "lower" (which way is better) for a metric name, or None when unknown."""
    if overrides and name in overrides:
        direction = overrides[name]
        if direction not in (HIGHER, LOWER):
            raise ValueError(f"direction of {name!r} must be {HIGHER!r} or {LOWER!r}, got {direction!r}")
        return direction
    low = name.lower()
    if any(mark in low for mark in _HIGHER_MARKS):
        return HIGHER
    if any(low.endswith(mark) for mark in _LOWER_MARKS) or "latency" in low:
        return LOWER
    return None


def clock_of(name: str) -> str:
    """"cpu" for a CPU-time metric or reference (a ``cpu`` word in its name), else "wall"."""
    return CPU if CPU in name.lower().split("_") else WALL


@dataclass
class MetricCompare:
    """One metric: values, the normalized slowdown factor (> 1 is worse) and the verdict.

    status: "ok", "improved", "regressed", "new" (not in the baseline), "missing" (not in the
    current result), "unknown-direction", or "info" (outside the gate: shown, never failing;
    its slowdown is still computed).
    """

    name: str
    direction: str | None
    baseline: float | None
    current: float | None
    normalized: float | None
    slowdown: float | None
    tolerance: float
    status: str


@dataclass
class CompareReport:
    """All metrics compared; ``ok`` is False when any gated metric regressed beyond its tolerance.

    reference_ratio: clock ("wall"/"cpu") -> how many times slower this run's reference
    workload was than the baseline's (the factor metrics of that clock were normalized by).
    """

    metrics: list[MetricCompare]
    reference_ratio: dict[str, float]
    reference: dict[str, dict[str, float | None]] = field(default_factory=dict)
    normalized: bool = True

    @property
    def regressions(self) -> list[MetricCompare]:
        return [m for m in self.metrics if m.status == "regressed"]

    @property
    def ok(self) -> bool:
        return not self.regressions

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reference_ratio": self.reference_ratio,
            "normalized": self.normalized,
            "reference": self.reference,
            "metrics": [asdict(m) for m in self.metrics],
        }


def reference_ratio(
    current: Mapping[str, Any], baseline: Mapping[str, Any]
) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    """Per clock, the median over the reference workloads both results hold of
    current / baseline (the median, so one workload caught in a burst of load cannot swing
    it); a clock with no shared reference borrows the other's, and 1.0 when there is none.
    Also returns the per-workload detail."""
    cur, base = current.get("reference") or {}, baseline.get("reference") or {}
    detail: dict[str, dict[str, float | None]] = {}
    ratios: dict[str, list[float]] = {WALL: [], CPU: []}
    for name in sorted(set(cur) | set(base)):
        c, b = cur.get(name), base.get(name)
        ratio = c / b if c and b and c > 0 and b > 0 else None
        detail[name] = {"baseline": b, "current": c, "ratio": ratio}
        if ratio is not None:
            ratios[clock_of(name)].append(ratio)
    out = {k: statistics.median(v) for k, v in ratios.items() if v}
    for clock, other in ((WALL, CPU), (CPU, WALL)):
        out.setdefault(clock, out.get(other, 1.0))
    return out, detail


def compare(
    current: Mapping[str, Any],
    baseline: Mapping[str, Any],
    *,
    tolerance: float = 0.15,
    per_metric: Mapping[str, float] | None = None,
    directions: Mapping[str, str] | None = None,
    normalize: bool = True,
    gate: Sequence[str] | None = None,
) -> CompareReport:
    """Compare ``current["metrics"]`` with ``baseline["metrics"]``.

    tolerance: allowed slowdown (0.15: up to 1.15x worse passes); ``per_metric`` overrides it
    by metric name. directions: metric -> "higher"/"lower", over the names' suffixes and the
    results' own "directions". normalize: divide out the reference workload's ratio.
    gate: fnmatch patterns of the metrics that can fail the check (None: all of them).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    overrides = {**(baseline.get("directions") or {}), **(current.get("directions") or {}), **(directions or {})}
    ratios, detail = reference_ratio(current, baseline) if normalize else ({WALL: 1.0, CPU: 1.0}, {})
    cur, base = current.get("metrics") or {}, baseline.get("metrics") or {}
    rows = []
    for name in sorted(set(cur) | set(base)):
        tol = float((per_metric or {}).get(name, tolerance))
        direction = metric_direction(name, overrides)
        c, b = cur.get(name), base.get(name)
        row = MetricCompare(name, direction, b, c, None, None, tol, "ok")
        if b is None:
            row.status = "new"
        elif c is None:
            row.status = "missing"
        elif direction is None:
            row.status = "unknown-direction"
        else:
            # On a machine `r` times slower, a time grows by `r` and a rate shrinks by it.
            r = 1.0 if any(mark in name.lower() for mark in _SPEED_INDEPENDENT) else ratios[clock_of(name)]
            row.normalized = c / r if direction == LOWER else c * r
            if row.normalized <= 0 or b <= 0:
                row.slowdown = math.inf if row.normalized <= 0 < b else 1.0
            else:
                row.slowdown = row.normalized / b if direction == LOWER else b / row.normalized
            if gate is not None and not any(fnmatch.fnmatchcase(name, g) for g in gate):
                row.status = "info"
            elif row.slowdown > 1 + tol:
                row.status = "regressed"
            elif row.slowdown < 1 / (1 + tol):
                row.status = "improved"
        rows.append(row)
    return CompareReport(rows, ratios, detail, normalize)


def format_compare(report: CompareReport) -> str:
    """The comparison as a plain-text table, then the verdict."""
    lines = []
    if report.normalized:
        for clock in (WALL, CPU):
            refs = ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in report.reference.items()
                             if v["ratio"] is not None and clock_of(k) == clock)
            lines.append(f"reference ({clock} time): this run takes {report.reference_ratio[clock]:.2f}x the "
                         f"baseline's ({refs or 'no shared reference'}); {clock} metrics are normalized by it")
    header = ["metric", "better", "baseline", "current", "normalized", "slowdown", "allowed", "status"]
    table = [header]
    for m in report.metrics:
        table.append([
            m.name,
            m.direction or "?",
            _num(m.baseline),
            _num(m.current),
            _num(m.normalized),
            "-" if m.slowdown is None else f"{m.slowdown:.2f}x",
            f"{1 + m.tolerance:.2f}x",
            m.status.upper() if m.status == "regressed" else m.status,
        ])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for k, r in enumerate(table):
        lines.append("  ".join(c.ljust(w) if i in (0, 1, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if k == 0:
            lines.append("-" * len(lines[-1]))
    bad = report.regressions
    lines.append("PASS: no gated metric regressed beyond its tolerance" if not bad else
                 f"FAIL: {len(bad)} metric(s) regressed: {', '.join(m.name for m in bad)}")
    return "\n".join(lines)


def print_compare(report: CompareReport, file: Any = None) -> None:
    print(format_compare(report), file=file or sys.stdout)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"


# --------------------------------------------------------------------------- baselines


def save_baseline(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``result`` as a baseline JSON (atomically: never half-written)."""
    if "metrics" not in result:
        raise ValueError("a baseline needs a 'metrics' mapping")
    from mmfurnace.io import write_json_atomic

    return write_json_atomic(path, dict(result), sort_keys=False)


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result or baseline JSON; InputError (a ValueError) naming the file when it is
    not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read benchmark result: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), dict):
        raise InputError(f"{path}: not a benchmark result (no 'metrics' object)")
    return raw


# --------------------------------------------------------------------------- reference workload


def reference_workloads(*, matmul_size: int = 512, batch: int = 32, memory_mib: int = 32) -> dict[str, Callable[[], object]]:
    """Fixed CPU workloads whose times track the machine's speed and load, one per kind of
    bottleneck a benchmark can hit: a (matmul_size)^2 matmul (compute), an add over
    ``memory_mib`` MiB tensors (memory bandwidth; neighbours on a shared host hurt this most),
    the forward pass of a small conv + MLP model (a mix), and a loop of tiny tensor ops with
    Python dicts (interpreter + dispatcher overhead, like collation). Names end in "_ms"
    because :func:`reference_workload` reports milliseconds."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(matmul_size, matmul_size, generator=gen)
    b = torch.randn(matmul_size, matmul_size, generator=gen)
    out = torch.empty(matmul_size, matmul_size)
    n = memory_mib * 2**20 // 4
    big_a, big_b, big_out = torch.randn(n, generator=gen), torch.randn(n, generator=gen), torch.empty(n)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # fixed weights without touching the global RNG
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    x = torch.randn(batch, 1, 28, 28, generator=gen)
    rows = [torch.randn(20, generator=gen) for _ in range(64)]

    def small_model() -> object:
        with torch.no_grad():
            return model(x)

    def python_ops() -> object:
        out_rows = []
        for i, row in enumerate(rows):
            item = {"x": row, "i": i, "present": i % 3 != 0}
            out_rows.append(item["x"] * 2 if item["present"] else torch.zeros_like(item["x"]))
        return torch.stack(out_rows)

    return {
        "ref_matmul_ms": lambda: torch.mm(a, b, out=out),
        "ref_memory_ms": lambda: torch.add(big_a, big_b, out=big_out),
        "ref_small_model_ms": small_model,
        "ref_python_ms": python_ops,
    }


def reference_workload(*, repeats: int = 15, warmup: int = 3, **sizes: int) -> dict[str, float]:
    """Median milliseconds of each reference workload (interleaved), wall clock
    (``ref_<name>_ms``) and CPU time (``ref_<name>_cpu_ms``), to store in a result's
    "reference" and normalize its metrics by. ``sizes``: see :func:`reference_workloads`."""
    return measure_workloads(reference_workloads(**sizes), repeats=repeats, warmup=warmup)


def measure_workloads(
    workloads: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 15,
    warmup: int = 3,
    per_round: int | Mapping[str, int] = 1,
) -> dict[str, float]:
    """Median milliseconds per call of each workload, timed interleaved: ``<name>`` (wall) and
    ``<name>`` with its "_ms" suffix turned into "_cpu_ms" (CPU time). Names must end in "_ms"."""
    bad = [n for n in workloads if not n.endswith("_ms")]
    if bad:
        raise ValueError(f"workload names must end in '_ms' (they become metric names): {bad}")
    times = time_interleaved(workloads, warmup=warmup, rounds=repeats, per_round=per_round)
    out = {}
    for name in workloads:
        out[name] = 1e3 * median(times.wall[name])
        out[name.removesuffix("_ms") + "_cpu_ms"] = 1e3 * median(times.cpu[name])
    return out


def benchmark_result(
    workloads: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 15,
    warmup: int = 3,
    reference: Mapping[str, Callable[[], object]] | None = None,
    suite: str = "custom",
) -> dict[str, Any]:
    """A comparable result: each workload's median ms per call (wall and CPU) as "metrics",
    and the reference workloads (default :func:`reference_workloads`), timed interleaved with
    them in this same run, as "reference"."""
    from mmfurnace.bench.machine import machine_info

    refs = dict(reference_workloads() if reference is None else reference)
    clash = sorted(set(refs) & set(workloads))
    if clash:
        raise ValueError(f"workload names clash with reference names: {clash}")
    timed = measure_workloads({**refs, **workloads}, repeats=repeats, warmup=warmup)
    is_ref = {n for r in refs for n in (r, r.removesuffix("_ms") + "_cpu_ms")}
    return {
        "suite": suite,
        "machine": machine_info(),
        "settings": {"repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads()},
        "reference": {k: v for k, v in timed.items() if k in is_ref},
        "metrics": {k: v for k, v in timed.items() if k not in is_ref},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare a benchmark result with a baseline; exit 1 on a regression.")
    parser.add_argument("current", type=Path)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--gate", action="append", help="fnmatch pattern of metrics that can fail (repeatable; default all)")
    parser.add_argument("--no-normalize", action="store_true", help="compare raw values (no reference workload)")
    args = parser.parse_args(argv)
    try:
        current, baseline = load_result(args.current), load_result(args.baseline)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = compare(current, baseline, tolerance=args.tolerance, normalize=not args.no_normalize, gate=args.gate)
    print_compare(report)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
