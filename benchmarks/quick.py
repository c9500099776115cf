"""The quick benchmark suite behind `make bench-check` (well under 3 minutes on 2 cores).

    python benchmarks/quick.py [--json runs/bench/quick.json]
    python benchmarks/quick.py --save-baseline benchmarks/baselines/quick-cpu.json
    python benchmarks/quick.py --compare benchmarks/baselines/quick-cpu.json [--tolerance 0.15]

What it times, interleaved round by round in one process (so a busy machine slows all alike):
  ref_*_ms                            the reference workload every comparison normalizes by
                                      (matmul, memory bandwidth, small model, Python overhead)
  eager_b1_latency_ms                 the default model (ModelConfig(), random weights) on one
                                      request: 1x28x28 image, 201x20 MFCC frames, 32 tokens
  eager_b32_samples_per_s             the same model on a batch of 32
  packed_loader_samples_per_s         one epoch of a tiny packed (memory-mapped) dataset through
                                      make_loader (batch 32, no workers): read + collate
  ort_b32_samples_per_s               ONNX Runtime on the exported default model, batch 32
                                      (only when onnxruntime is installed)
Every call is measured in wall time and in CPU time of this process. Prints the machine and a
table; writes the result JSON; --compare exits 1 when a gated metric is slower than the
baseline by more than the tolerance after normalizing by the reference. By default only the
CPU-time metrics gate: with one torch thread they measure what the code costs and barely move
when neighbours load a shared machine, while wall-clock medians there swing 2-3x (they are
still compared and shown; --gate all makes them count).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmfurnace.bench.engine_suite import default_info, default_lengths
from mmfurnace.bench.machine import machine_info
from mmfurnace.bench.profile import SyntheticDataset
from mmfurnace.bench.regression import (
    clock_of,
    compare,
    load_result,
    print_compare,
    reference_workloads,
    save_baseline,
)
from mmfurnace.bench.timing import median, summarize, time_interleaved
from mmfurnace.data.config import DataConfig

SUITE = "quick"
SCHEMA = 1


def build_workloads(workdir: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, int], dict[str, Any], list[dict[str, str]]]:
    """name -> callable, name -> samples per call, settings, skipped."""
    from mmfurnace.data.cache import PackedDataset, pack_datasets
    from mmfurnace.data.loader import make_loader
    from mmfurnace.export import make_example_batch
    from mmfurnace.models import ModelConfig, build_model

    data = DataConfig()
    info, lengths = default_info(data), default_lengths(data)
    config = ModelConfig()
    torch.manual_seed(0)
    model = build_model(config, info).eval()
    batches = {b: make_example_batch(info, b, lengths=lengths, absent=False, seed=b) for b in (1, 32)}

    def eager(b: int) -> Any:
        def run() -> object:
            with torch.no_grad():
                return model.forward_batch(batches[b])
        return run

    fns: dict[str, Any] = dict(reference_workloads())
    rows: dict[str, int] = {}
    fns["eager_b1"], rows["eager_b1"] = eager(1), 1
    fns["eager_b32"], rows["eager_b32"] = eager(32), 32

    packed_dir = workdir / "packed"
    synthetic = SyntheticDataset(info, args.loader_samples, lengths=lengths)
    pack_datasets(packed_dir, {"train": synthetic}, info=info)
    packed = PackedDataset(packed_dir, "train")
    loader = make_loader(packed, modalities=info.modalities, batch_size=32, shuffle=True, num_workers=0, seed=0)

    def loader_epoch() -> int:
        return sum(len(batch) for batch in loader)

    fns["packed_loader"], rows["packed_loader"] = loader_epoch, len(packed)

    skipped = []
    try:
        from mmfurnace.export import RUNTIMES, export_model

        ok, why = RUNTIMES["onnxruntime"].available()
        if not ok:
            raise RuntimeError(why)
        export_dir = export_model(model, info, workdir / "export", formats=("onnx",), split=False, verify=False, config=config)
        ort = RUNTIMES["onnxruntime"](export_dir, precision="fp32", threads=args.threads)
        feed = ort.feed(batches[32])
        fns["ort_b32"], rows["ort_b32"] = (lambda: ort.run(feed)), 32  # numpy feed pre-built, as bench_engines does
    except Exception as err:  # ORT missing or the export failing is reported, not fatal
        skipped.append({"metric": "ort_b32_samples_per_s", "reason": f"{type(err).__name__}: {err}"[:300]})

    settings = {
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "lengths": lengths,
        "image": list(info.input_shapes["image"]),
        "model": {"fusion": config.fusion, "hidden_dim": config.hidden_dim,
                  "encoders": {m: e.name for m, e in config.encoders.items()}},
        "loader": {"samples": len(packed), "batch_size": 32, "workers": 0},
    }
    return fns, rows, settings, skipped


# Calls per round, so each workload gets a comparable slice of every round.
PER_ROUND = {"ref_matmul_ms": 4, "ref_memory_ms": 4, "ref_small_model_ms": 4, "ref_python_ms": 10, "eager_b1": 10, "eager_b32": 2, "ort_b32": 2, "packed_loader": 1}


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mmfurnace-quick-") as tmp:
        fns, rows, settings, skipped = build_workloads(Path(tmp), args)
        times = time_interleaved(fns, warmup=args.warmup, rounds=args.rounds, per_round=PER_ROUND)
    reference: dict[str, float] = {}
    metrics: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    for name in fns:
        wall, cpu = times.wall[name], times.cpu[name]
        details[name] = {"wall": summarize(wall), "cpu": summarize(cpu)}
        if name.startswith("ref_"):
            reference[name] = 1e3 * median(wall)
            reference[name.removesuffix("_ms") + "_cpu_ms"] = 1e3 * median(cpu)
        elif name == "eager_b1":
            metrics["eager_b1_latency_ms"] = 1e3 * median(wall)
            metrics["eager_b1_latency_cpu_ms"] = 1e3 * median(cpu)
        else:
            metrics[f"{name}_samples_per_s"] = rows[name] / median(wall)
            metrics[f"{name}_samples_per_cpu_s"] = rows[name] / median(cpu)
    return {
        "suite": SUITE,
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": _load_average(),  # what else ran on the machine around the measurement
        "note": args.note,
        "settings": settings,
        "reference": reference,
        "metrics": metrics,
        "details": details,
        "skipped": skipped,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on this platform
        return None


def print_result(result: dict[str, Any]) -> None:
    m = result["machine"]
    cpu = m["cpu"]
    print(f"machine : {cpu['model']} ({cpu['arch']}), {cpu['logical_cores']} cores ({cpu['usable_cores']} usable), "
          f"torch {m['versions'].get('torch')}, {result['settings']['threads']} torch thread(s), "
          f"load average {result['load_average']}")
    s = result["settings"]
    print(f"settings: {s['rounds']} interleaved rounds, warmup {s['warmup']}, lengths {s['lengths']}, "
          f"model {s['model']['fusion']}, loader {s['loader']['samples']} samples")
    print()
    head = f"{'workload':<16}{'metric':<18}{'wall':>12}{'cpu':>12}   {'wall ms/call p50':>17}{'p95':>9}{'cpu p50':>9}{'calls':>7}"
    print(head)
    print("-" * len(head))
    for name, d in result["details"].items():
        if name.startswith("ref_"):
            kind, wall, cpu_ = "ms/call", d["wall"]["median_ms"], d["cpu"]["median_ms"]
        elif name == "eager_b1":
            kind, wall, cpu_ = "latency ms", result["metrics"]["eager_b1_latency_ms"], result["metrics"]["eager_b1_latency_cpu_ms"]
        else:
            kind, wall, cpu_ = "samples/s", result["metrics"][f"{name}_samples_per_s"], result["metrics"][f"{name}_samples_per_cpu_s"]
        label = name.removesuffix("_ms") if name.startswith("ref_") else name
        print(f"{label:<16}{kind:<18}{wall:>12.2f}{cpu_:>12.2f}   {d['wall']['median_ms']:>17.3f}"
              f"{d['wall']['p95_ms']:>9.3f}{d['cpu']['median_ms']:>9.3f}{d['wall']['n']:>7}")
    for s in result["skipped"]:
        print(f"skipped {s['metric']}: {s['reason'][:120]}")
    print("(cpu: the same calls measured in CPU time of this process; it barely moves when other "
          "processes load the machine)")


GATES = {"cpu": lambda n: clock_of(n) == "cpu", "wall": lambda n: clock_of(n) == "wall", "all": lambda n: True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("runs/bench/quick.json"), help="write the result here")
    parser.add_argument("--save-baseline", type=Path, help="also write the result as a baseline here")
    parser.add_argument("--compare", type=Path, help="compare with this baseline; exit 1 on a regression")
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed slowdown after normalizing (0.15 = 1.15x)")
    parser.add_argument("--gate", choices=sorted(GATES), default="cpu",
                        help="which metrics can fail --compare: CPU-time ones (default; steady on a shared "
                             "machine), wall-clock ones, or all; the others are shown as info")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--note", default=None, help="free text stored in the result (e.g. where and how it ran)")
    parser.add_argument("--loader-samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadier numbers on a shared machine; 0 keeps torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # this script is the top level: it owns the setting
    args.threads = torch.get_num_threads()
    baseline = load_result(args.compare) if args.compare else None  # fail before measuring

    result = run_suite(args)
    print_result(result)
    save_baseline(result, args.json)
    print(f"\nwrote {args.json}")
    if args.save_baseline:
        save_baseline(result, args.save_baseline)
        print(f"wrote baseline {args.save_baseline}")
    if baseline is None:
        return 0
    print(f"\ncompared with {args.compare} (measured on {baseline.get('machine', {}).get('cpu', {}).get('model', '?')}):")
    gate = [n for n in {**baseline["metrics"], **result["metrics"]} if GATES[args.gate](n)]
    report = compare(result, baseline, tolerance=args.tolerance, gate=gate)
    print_compare(report)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
