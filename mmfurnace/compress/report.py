"""Write compression results: rows appended to report/compression.md and compression.csv, a
Pareto plot (accuracy vs latency, marker area = size on disk), and small table/bar-chart
writers the sensitivity analysis uses. Variants over their accuracy budget (gate.py) are
marked FAILED in all three."""

from __future__ import annotations

import csv
import datetime as _dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "run", "checkpoint", "variant", "method", "backend", "parent", "accuracy", "delta_pt",
    "p50_ms", "p95_ms", "throughput", "speedup", "size_bytes", "params", "macs", "isa", "budget_pt", "gate",
    "int8_format", "cpu_throughput", "speedup_cpu",
)
MD_COLUMNS = (
    ("variant", "variant"), ("backend", "backend"), ("accuracy", "acc %"), ("delta_pt", "Δ pt"),
    ("gate", "gate (budget)"), ("p50_ms", "p50 ms (b=1)"), ("p95_ms", "p95 ms"),
    ("throughput", "samples/s (b=32)"), ("speedup", "× parent"), ("speedup_cpu", "× parent (CPU time)"),
    ("size_bytes", "size"), ("params", "params"),
    ("macs", "MACs/sample"), ("int8_format", "INT8 format"), ("isa", "CPU ISA"),
)


def checkpoint_title(path: str | Path) -> str:
    """A checkpoint as a report names it: runs/late/seed0/best -> "late/seed0/best" (its own
    folder name alone, "best", says nothing about which model it is)."""
    parts = Path(path).parts
    if parts and parts[-1] in ("best", "last"):
        return "/".join(parts[-3:])
    return parts[-1] if parts else str(path)


def append_report(report_dir: str | Path, rows: Sequence[dict[str, Any]], *, title: str,
                  plot: bool = True) -> dict[str, Path]:
    """Append ``rows`` (dicts with :data:`COLUMNS` keys) to ``report_dir``/compression.csv and
    compression.md (one section per call, headed ``title``), and redraw
    compression_pareto.png from these rows. Returns the paths written."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": report_dir / "compression.csv", "md": report_dir / "compression.md"}
    write_csv(paths["csv"], rows, COLUMNS, append=True)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    section = [f"## {title} ({stamp})", "", markdown_table(rows, MD_COLUMNS), ""]
    with paths["md"].open("a", encoding="utf-8") as f:
        if f.tell() == 0:
            f.write("# Compression results\n\nEach section: a parent model and its compressed variants, "
                    "measured in one run on the same inputs (latency interleaved). Δ pt and × parent "
                    "compare each variant with the FP32 parent on the same runtime (× parent (CPU time): per "
                    "second of this process's CPU time, steadier on a shared machine).\n\n")
        f.write("\n".join(section) + "\n")
    if plot:
        paths["png"] = pareto_plot(report_dir / "compression_pareto.png", rows, title=title)
    return paths


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], *, append: bool = False) -> Path:
    new = not (append and path.is_file() and path.stat().st_size > 0)
    if not new and _header(path) != list(columns):
        # a file from an older release (fewer columns): rewrite it under today's header, so
        # appended rows line up; its rows keep their values, new columns stay empty
        with path.open(newline="", encoding="utf-8") as f:
            rows = [*csv.DictReader(f), *rows]
        append, new = False, True
    with path.open("a" if append else "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(row.get(k)) for k in columns})
    return path


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(key, row) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _cell(key: str, row: dict[str, Any]) -> str:
    if key == "gate" and row.get("gate"):
        budget = f"{row['budget_pt']:g} pt"
        if row["gate"] == "FAILED":
            return f"**FAILED** (lost {-row['delta_pt']:.2f} > {budget})"
        return f"PASS (≤ {budget})"
    return _fmt(key, row.get(key))


def pareto_plot(path: Path, rows: Sequence[dict[str, Any]], *, title: str) -> Path:
    """Accuracy (y) vs latency (x, log): left batch-1 p50, right one batch of
    ``throughput_batch`` rows. Marker area ~ size on disk; colour = runtime; FP32 parents
    drawn as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    colours = {"torch": "tab:blue", "onnxruntime": "tab:orange", "openvino": "tab:green"}
    biggest = max((float(r.get("size_bytes") or 0) for r in rows), default=1.0) or 1.0
    batch = next((int(r["batch_size"]) for r in rows if r.get("batch_size")), 32)
    panels = (("p50_ms", "latency p50 at batch 1 (ms, log)"),
              ("batch_ms", f"latency of a batch of {batch} (ms, log) = {batch} / throughput"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for r in rows:
            if r.get("accuracy") is None or not r.get("throughput"):
                continue
            x = r["p50_ms"] if key == "p50_ms" else 1e3 * batch / r["throughput"]
            parent = r.get("parent") in (None, "", r.get("variant"))
            failed = r.get("gate") == "FAILED"
            ax.scatter(x, 100 * r["accuracy"], s=40 + 600 * float(r.get("size_bytes") or 0) / biggest,
                       alpha=0.6, c=colours.get(r.get("backend"), "tab:gray"),
                       marker="s" if parent else ("X" if failed else "o"),
                       edgecolors="black" if parent else ("red" if failed else "none"), linewidths=1.5)
            label = str(r["variant"])[:28] + (" FAILED" if failed else "")
            ax.annotate(label, (x, 100 * r["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color="red" if failed else "black")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    short = title if len(title) <= 110 else title[:107] + "..."
    fig.suptitle(f"{short}\nsquares: FP32 parents; area: size on disk; blue: torch, orange: onnxruntime, green: openvino; "
                 "red X: FAILED (over its accuracy budget)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[float], *, highlight: Sequence[bool],
              xlabel: str, title: str) -> Path:
    """Horizontal bars (one per label, top = first); highlighted bars in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(labels) + 1.2)))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=["tab:red" if h else "tab:blue" for h in highlight])
    ax.set_yticks(ys, [_short(label) for label in labels], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(label: str, limit: int = 48) -> str:
    return label if len(label) <= limit else "…" + label[-(limit - 1):]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, float):
        return round(value, 6)
    return value


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "accuracy":
        return f"{100 * value:.2f}"
    if key == "delta_pt":
        return f"{value:+.2f}"
    if key in ("p50_ms", "p95_ms"):
        return f"{value:.2f}"
    if key == "throughput":
        return f"{value:.0f}"
    if key in ("speedup", "speedup_cpu"):
        return f"{value:.2f}×"
    if key == "size_bytes":
        return _bytes(int(value))
    if key in ("params", "macs"):
        return _count(int(value))
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)
