"""Reading a runtime benchmark's result (:func:`mmfurnace.bench.runtimes.bench_runtimes`): flat
metrics for the regression check, the best CPU configuration against eager FP32, the table
and the plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

REFERENCE = ("eager", "fp32")


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat metric names for the regression check: ``<runtime>_<precision>_b<N>_samples_per_s``
    and ``<runtime>_<precision>_b1_latency_p50_ms`` (p95, p99 too)."""
    metrics: dict[str, float] = {}
    for r in result["results"]:
        stem = f"{r['backend'].replace('-', '_')}_{r['precision']}"
        for b, entry in r["batches"].items():
            metrics[f"{stem}_b{b}_samples_per_s"] = entry["throughput"]
        lat = r["latency_ms"]
        if lat:
            for q in ("p50", "p95", "p99"):
                metrics[f"{stem}_b{lat['batch']}_latency_{q}_ms"] = lat[q]
    return metrics


def throughput(
    result: Mapping[str, Any], runtime: str, precision: str, batch: int, key: str = "throughput"
) -> float | None:
    """Samples/s of one configuration at ``batch`` (key "cpu_throughput": per CPU second)."""
    for r in result["results"]:
        if r["backend"] == runtime and r["precision"] == precision:
            entry = r["batches"].get(str(batch))
            return None if entry is None or entry.get(key) is None else float(entry[key])
    return None


def best_cpu_vs_eager(result: Mapping[str, Any], batch: int = 32) -> dict[str, Any] | None:
    """The fastest CPU configuration at ``batch`` (by wall-clock samples/s) and its ratio to
    eager FP32, by wall clock ("ratio") and by CPU time ("cpu_ratio", steadier when other
    processes load the machine)."""
    base = throughput(result, *REFERENCE, batch)
    cpu = [
        r
        for r in result["results"]
        if str(r["device"]).lower().startswith("cpu") and str(batch) in r["batches"]
    ]
    if base is None or not cpu:
        return None
    best = max(cpu, key=lambda r: r["batches"][str(batch)]["throughput"])
    entry = best["batches"][str(batch)]
    base_cpu = throughput(result, *REFERENCE, batch, key="cpu_throughput")
    return {
        "backend": best["backend"],
        "precision": best["precision"],
        "batch": batch,
        "throughput": entry["throughput"],
        "eager_fp32": base,
        "ratio": entry["throughput"] / base,
        "cpu_ratio": entry["cpu_throughput"] / base_cpu
        if entry.get("cpu_throughput") and base_cpu
        else None,
    }


def format_table(result: Mapping[str, Any], ratio_batch: int = 32) -> str:
    """The results as a plain-text table: latency at batch 1, samples/s per batch size, and
    the ratio to eager FP32 at ``ratio_batch`` by wall clock and by CPU time."""
    sizes = [str(b) for b in result["settings"]["batch_sizes"]]
    rb = str(ratio_batch)
    base = throughput(result, *REFERENCE, ratio_batch)
    base_cpu = throughput(result, *REFERENCE, ratio_batch, key="cpu_throughput")
    header = ["runtime", "prec", "p50 ms", "p95 ms", "p99 ms", *[f"b{b} /s" for b in sizes]]
    if rb in sizes:
        header += [f"x@b{rb}", f"x@b{rb} cpu"]
    rows = [header]
    for r in result["results"]:
        lat = r["latency_ms"] or {}
        row = [
            r["backend"],
            r["precision"],
            *(f"{lat[k]:.2f}" if k in lat else "-" for k in ("p50", "p95", "p99")),
            *(f"{r['batches'][b]['throughput']:.0f}" for b in sizes),
        ]
        if rb in sizes:
            entry = r["batches"][rb]
            row.append(f"{entry['throughput'] / base:.2f}" if base else "-")
            cpu = entry.get("cpu_throughput")
            row.append(f"{cpu / base_cpu:.2f}" if cpu and base_cpu else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    for s in result.get("skipped", []):
        lines.append(f"skipped {s['backend']}/{s['precision']}: {s['reason'][:100]}")
    return "\n".join(lines)


def format_machine(result: Mapping[str, Any]) -> str:
    """The machine the result was measured on: CPU, ISA extensions, GPUs, library versions."""
    m = result["machine"]
    cpu = m["cpu"]
    isa = ", ".join(k for k, v in cpu.get("isa", {}).items() if v) or "-"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    threads = m.get("torch_threads") or {}
    load = m.get("load_average")
    load_text = f", load average {load[0]:.1f}" if load else ""
    return (
        f"machine : {cpu['model']} ({cpu['arch']}), {cpu['logical_cores']} cores ({cpu['usable_cores']} usable), "
        f"torch threads {threads.get('intra_op')}{load_text}\n"
        f"isa     : {isa}\n"
        f"gpu     : {', '.join(m['gpus']) or 'none'}\n"
        f"versions: {versions}"
    )


def print_table(result: Mapping[str, Any]) -> None:
    """Print the machine, the table, and the best CPU runtime vs eager FP32 at batch 32."""
    print(format_machine(result))
    s = result["settings"]
    print(
        f"settings: batch sizes {s['batch_sizes']}, {s['iters']} timed calls each in {s['rounds']} interleaved rounds, "
        f"warmup {s['warmup']}, threads {s['threads'] or 'runtime default'}, lengths {s['sequence_lengths']}"
    )
    print(format_table(result))
    best = best_cpu_vs_eager(result, 32)
    if best:
        cpu = f", {best['cpu_ratio']:.2f}x by CPU time" if best.get("cpu_ratio") else ""
        print(
            f"best CPU runtime at batch 32: {best['backend']}/{best['precision']} "
            f"{best['throughput']:.0f} samples/s = {best['ratio']:.2f}x eager fp32 "
            f"({best['eager_fp32']:.0f} samples/s){cpu}"
        )


def plot_runtimes(result: Mapping[str, Any], path: str | Path) -> Path:
    """A PNG bar chart: throughput per configuration, grouped by batch size (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    sizes = [str(b) for b in result["settings"]["batch_sizes"]]
    configs = result["results"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sizes) * max(1, len(configs)) / 3), 4.5))
    width = 0.8 / max(1, len(configs))
    for i, r in enumerate(configs):
        xs = [j + i * width for j in range(len(sizes))]
        ax.bar(
            xs,
            [r["batches"][b]["throughput"] for b in sizes],
            width,
            label=f"{r['backend']}/{r['precision']}",
        )
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(sizes))])
    ax.set_xticklabels([f"batch {b}" for b in sizes])
    ax.set_ylabel("samples / s")
    ax.set_yscale("log")
    cpu = result["machine"]["cpu"]
    ax.set_title(f"Inference throughput by runtime — {cpu['model']}, {cpu['usable_cores']} cores")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
