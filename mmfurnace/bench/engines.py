"""Benchmark the inference backends of one export against each other, in one run.

bench_engines() loads every available backend x precision, warms each up on every batch size,
then times them *interleaved*: each round runs every configuration on every batch size for a
few iterations, so slow drift of the machine (thermal state, neighbours on a shared host)
spreads over all backends instead of penalising whichever ran last. Reported per
configuration: latency p50/p95/p99 (ms) at the latency batch size (1) and throughput
(samples/s, batch size / median call time) at every batch size. Each timed call is
``runtime.run(feed)`` on a pre-built numpy feed: input validation + the engine + the copy of
the logits back, i.e. what a caller pays.
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.bench.machine import machine_info
from mmfurnace.bench.regression import reference_workload
from mmfurnace.bench.timing import percentiles, time_interleaved
from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError
from mmfurnace.export.inputs import flatten_batch
from mmfurnace.export.runtimes import RUNTIMES
from mmfurnace.export.spec import FULL_GRAPH, load_spec

REFERENCE = ("eager", "fp32")


def bench_engines(
    export_dir: str | Path,
    batches_by_size: Mapping[int, Batch],
    *,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    warmup: int = 3,
    iters: int = 20,
    rounds: int = 5,
    threads: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    latency_batch: int = 1,
    reference: bool = True,
) -> dict[str, Any]:
    """Time every available backend x precision on every batch in ``batches_by_size``.

    iters: timed calls per configuration and batch size, spread over ``rounds`` interleaved
    rounds (``iters // rounds`` each, at least one). threads: intra-op threads for every
    backend (None: each backend's default). options: backend -> extra constructor options.
    reference: also time the fixed reference workload of :mod:`mmfurnace.bench.regression`.
    Returns a JSON-serializable dict: "machine", "export", "settings", "results" (one entry
    per configuration), "skipped", and "metrics" / "reference" in the shape
    ``python -m mmfurnace.bench.regression`` compares against a baseline.
    """
    if not batches_by_size:
        raise ConfigError("bench_engines needs at least one batch size")
    if iters < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(
            f"need iters >= 1, rounds >= 1, warmup >= 0 (got {iters}, {rounds}, {warmup})"
        )
    spec = load_spec(export_dir)
    names = list(backends) if backends is not None else RUNTIMES.names()
    sizes = sorted(batches_by_size)
    feeds = {b: {k: _numpy(v) for k, v in flatten_batch(batches_by_size[b]).items()} for b in sizes}
    for b, feed in feeds.items():
        got = len(next(iter(feed.values())))
        if got != b:
            raise ConfigError(f"batches_by_size[{b}] holds a batch of {got}")

    runtimes, skipped = _load(export_dir, names, precisions, threads, options)
    for (name, precision), entry in list(runtimes.items()):
        try:
            for b in sizes:
                for _ in range(warmup + (1 if name == "compile" else 0)):
                    entry["runtime"].run(feeds[b])
            settle = getattr(entry["runtime"], "wait_for_static", None)
            if settle is not None and settle():  # OpenVINO: time its static-shape copies
                for b in sizes:
                    entry["runtime"].run(feeds[b])
        except Exception as err:  # a backend that cannot run is reported, not fatal
            skipped.append(
                {
                    "backend": name,
                    "precision": precision,
                    "reason": f"{type(err).__name__}: {err}"[:300],
                }
            )
            del runtimes[(name, precision)]

    fns = {
        _key(name, precision, b): functools.partial(entry["runtime"].run, feeds[b])
        for (name, precision), entry in runtimes.items()
        for b in sizes
    }
    per_round = max(1, iters // rounds)
    timed = time_interleaved(fns, warmup=0, rounds=rounds, per_round=per_round) if fns else None
    keys = [(n, p, b) for (n, p) in runtimes for b in sizes]
    times = {key: timed.wall[_key(*key)] for key in keys} if timed else {}
    cpu_times = {key: timed.cpu[_key(*key)] for key in keys} if timed else {}

    results = []
    for (name, precision), entry in runtimes.items():
        per_size = {}
        for b in sizes:
            t = np.asarray(times[(name, precision, b)]) * 1e3
            per_size[str(b)] = {
                "median_ms": float(np.median(t)),
                "p95_ms": float(np.percentile(t, 95)),
                "throughput": float(b / (np.median(t) / 1e3)),
                # CPU seconds of this process per call (all its threads): steadier than wall
                # time when neighbours load the machine.
                "cpu_ms": 1e3 * float(np.median(cpu_times[(name, precision, b)])),
            }
            cpu_s = per_size[str(b)]["cpu_ms"] / 1e3
            per_size[str(b)]["cpu_throughput"] = float(b / cpu_s) if cpu_s > 0 else None
        lat = times[(name, precision, latency_batch)] if latency_batch in sizes else None  # seconds
        results.append(
            {
                "backend": name,
                "precision": precision,
                "device": str(entry["describe"].get("device", "cpu")),
                "describe": entry["describe"],
                "load_s": entry["load_s"],
                "latency_ms": None
                if lat is None
                else {
                    "batch": latency_batch,
                    **percentiles([t * 1e3 for t in lat], (50, 95, 99)),
                    "mean": 1e3 * float(np.mean(lat)),
                },
                "batches": per_size,
            }
        )
    result = {
        "suite": "engines",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "export": {
            "dir": str(spec.directory),
            "modalities": spec.modalities,
            "onnx_sha256": spec.hashes.get("model.onnx"),
            "model": spec.model.get("config"),
        },
        "settings": {
            "batch_sizes": sizes,
            "warmup": warmup,
            "iters": per_round * rounds,
            "rounds": rounds,
            "threads": threads,
            "precisions": list(precisions),
            "latency_batch": latency_batch,
            "sequence_lengths": {
                k: int(v.shape[1])
                for k, v in flatten_batch(batches_by_size[sizes[0]]).items()
                if k.endswith("_mask")
            },
        },
        "results": results,
        "skipped": skipped,
    }
    result["metrics"] = flat_metrics(result)
    if reference:
        # The same fixed workload timed in this run lets mmfurnace.bench.regression compare
        # this result with a baseline from a faster or busier machine.
        result["reference"] = reference_workload()
    return result


def _key(name: str, precision: str, batch: int) -> str:
    return f"{name}/{precision}/b{batch}"


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat metric names for the regression check: ``<backend>_<precision>_b<N>_samples_per_s``
    and ``<backend>_<precision>_b1_latency_p50_ms`` (p95, p99 too)."""
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


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _load(
    export_dir: str | Path,
    names: Sequence[str],
    precisions: Sequence[str],
    threads: int | None,
    options: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, str]]]:
    runtimes: dict[tuple[str, str], dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    for name in names:
        cls = RUNTIMES[name]
        ok, why = cls.available()
        for precision in precisions:
            if not ok:
                skipped.append({"backend": name, "precision": precision, "reason": why})
                continue
            if precision not in cls.supported_precisions():
                skipped.append(
                    {
                        "backend": name,
                        "precision": precision,
                        "reason": f"{name} does not run {precision} here",
                    }
                )
                continue
            start = time.perf_counter()
            try:
                rt = cls(
                    export_dir,
                    graph=FULL_GRAPH,
                    precision=precision,
                    threads=threads,
                    **dict((options or {}).get(name, {})),
                )
            except Exception as err:  # report and go on with the other backends
                skipped.append(
                    {
                        "backend": name,
                        "precision": precision,
                        "reason": f"{type(err).__name__}: {err}"[:300],
                    }
                )
                continue
            runtimes[(name, precision)] = {
                "runtime": rt,
                "describe": _jsonable(rt.describe()),
                "load_s": time.perf_counter() - start,
            }
    return runtimes, skipped


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def throughput(
    result: Mapping[str, Any], backend: str, precision: str, batch: int, key: str = "throughput"
) -> float | None:
    """Samples/s of one configuration at ``batch`` (key "cpu_throughput": per CPU second)."""
    for r in result["results"]:
        if r["backend"] == backend and r["precision"] == precision:
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
    header = ["backend", "prec", "p50 ms", "p95 ms", "p99 ms", *[f"b{b} /s" for b in sizes]]
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
    """Print the machine, the table, and the best CPU backend vs eager FP32 at batch 32."""
    print(format_machine(result))
    s = result["settings"]
    print(
        f"settings: batch sizes {s['batch_sizes']}, {s['iters']} timed calls each in {s['rounds']} interleaved rounds, "
        f"warmup {s['warmup']}, threads {s['threads'] or 'backend default'}, lengths {s['sequence_lengths']}"
    )
    print(format_table(result))
    best = best_cpu_vs_eager(result, 32)
    if best:
        cpu = f", {best['cpu_ratio']:.2f}x by CPU time" if best.get("cpu_ratio") else ""
        print(
            f"best CPU backend at batch 32: {best['backend']}/{best['precision']} "
            f"{best['throughput']:.0f} samples/s = {best['ratio']:.2f}x eager fp32 "
            f"({best['eager_fp32']:.0f} samples/s){cpu}"
        )


def plot_engines(result: Mapping[str, Any], path: str | Path) -> Path:
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
    ax.set_title(f"Inference throughput by backend — {cpu['model']}, {cpu['usable_cores']} cores")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
