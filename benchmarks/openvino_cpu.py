"""OpenVINO on this CPU, beside eager PyTorch and ONNX Runtime, FP32 and INT8, in one run.

    python benchmarks/openvino_cpu.py EXPORT_DIR [--int8 QUANTIZED_EXPORT ...] [--batches 1,32]
        [--threads 1] [--rounds 10] [--data-root data/digits-av] [--json report/openvino_cpu.json]

Configurations, timed interleaved on the same full-length inputs (every modality present):
eager FP32, ONNX Runtime FP32, OpenVINO FP32 on the dynamic-shape graph (``static_shapes=0``,
what earlier releases ran) and as the runtime runs it now (a static-shape copy compiled in the
background for input shapes that recur); for each ``--int8`` export (from ``mmfurnace
compress``, QDQ), ONNX Runtime and OpenVINO running it. Each row: median wall and CPU time per
call, throughput, and ratios against eager and against the same backend's FP32. With
``--data-root`` each configuration's accuracy on the test split is printed too (INT8 on
OpenVINO is OpenVINO's own kernels: its accuracy is measured, not assumed from ORT's).
CPU time (all threads of this process) is steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def configs(export: Path, int8: list[Path], threads: int) -> dict[str, tuple[str, Path, dict[str, Any]]]:
    """name -> (runtime, export dir, options)."""
    out = {
        "eager fp32": ("eager", export, {}),
        "onnxruntime fp32": ("onnxruntime", export, {"optimized_model": False}),
        "openvino fp32, dynamic shapes": ("openvino", export, {"static_shapes": 0}),
        "openvino fp32": ("openvino", export, {}),
    }
    for path in int8:
        out[f"onnxruntime int8 {path.name}"] = ("onnxruntime", path, {"optimized_model": False})
        out[f"openvino int8 {path.name}, dynamic shapes"] = ("openvino", path, {"static_shapes": 0})
        out[f"openvino int8 {path.name}"] = ("openvino", path, {})
    return {k: (rt, p, {**o, "threads": threads}) for k, (rt, p, o) in out.items()}


def load(configs_: dict[str, tuple[str, Path, dict[str, Any]]]) -> dict[str, Any]:
    from mmfurnace.export.runtimes import RUNTIMES

    runtimes = {}
    for name, (backend, path, options) in configs_.items():
        ok, why = RUNTIMES[backend].available()
        if not ok:
            print(f"skipped {name}: {why}", file=sys.stderr)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runtimes[name] = RUNTIMES[backend](path, **options)
        for w in caught:
            print(f"{name}: {w.category.__name__}: {w.message}", file=sys.stderr)
    return runtimes


def accuracy(runtime: Any, batches: list[Any]) -> float:
    hits = sum(int((runtime.run(b).argmax(1) == b.labels.numpy()).sum()) for b in batches)
    return hits / sum(len(b) for b in batches)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export", type=Path, help="FP32 export folder with model.safetensors (mmfurnace export)")
    p.add_argument("--int8", type=Path, nargs="*", default=[], help="quantized exports of the same model")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--data-root", type=Path, default=None, help="also measure accuracy on this dataset's test split")
    p.add_argument("--json", type=Path, default=Path("report/openvino_cpu.json"))
    args = p.parse_args(argv)

    from mmfurnace.bench.engine_suite import default_lengths
    from mmfurnace.bench.machine import machine_info
    from mmfurnace.bench.timing import time_interleaved
    from mmfurnace.data.config import DataConfig
    from mmfurnace.export import load_spec, make_example_batch
    from mmfurnace.export.inputs import flatten_batch
    from mmfurnace.train.checkpoint import write_json_atomic

    spec = load_spec(args.export)
    sizes = [int(b) for b in args.batches.split(",")]
    full = default_lengths(DataConfig())
    feeds = {b: {k: np.asarray(v) for k, v in flatten_batch(make_example_batch(
        spec.info, b, lengths=full, absent=False, seed=b, modalities=spec.modalities)).items()} for b in sizes}
    runtimes = load(configs(args.export, args.int8, args.threads))
    for rt in runtimes.values():  # warm up; OpenVINO compiles its static copies meanwhile
        for feed in feeds.values():
            for _ in range(3):
                rt.run(feed)
        if getattr(rt, "wait_for_static", None) and rt.wait_for_static():
            for feed in feeds.values():
                rt.run(feed)
    fns = {f"{n}@{b}": functools.partial(rt.run, feeds[b]) for n, rt in runtimes.items() for b in sizes}
    timed = time_interleaved(fns, warmup=0, rounds=args.rounds, per_round=args.per_round)
    test = None
    if args.data_root is not None:
        from mmfurnace.data.datasets import build_dataset
        from mmfurnace.data.loader import make_loader

        data = DataConfig(root=args.data_root, modalities=list(spec.modalities))
        test = list(make_loader(build_dataset(data, "test"), modalities=spec.modalities, batch_size=64,
                                shuffle=False))

    machine = machine_info()
    rows = []
    for name, rt in runtimes.items():
        row: dict[str, Any] = {"config": name, "backend": rt.name, "describe": rt.describe()}
        for b in sizes:
            wall, cpu = (float(np.median(t[f"{name}@{b}"])) for t in (timed.wall, timed.cpu))
            row[f"b{b}"] = {"wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu, "samples_per_s": b / wall,
                            "cpu_samples_per_s": b / cpu if cpu > 0 else None}
        if test is not None:
            row["accuracy"] = accuracy(rt, test)
        rows.append(row)
    by_name = {r["config"]: r for r in rows}
    for r in rows:
        fp32 = by_name.get(f"{r['backend']} fp32") if " int8 " in r["config"] else None
        for b in sizes:
            cell = r[f"b{b}"]
            for ref_name, ref in (("eager", by_name.get("eager fp32")), ("fp32", fp32)):
                if ref is not None:
                    cell[f"x_{ref_name}_wall"] = ref[f"b{b}"]["wall_ms"] / cell["wall_ms"]
                    cell[f"x_{ref_name}_cpu"] = ref[f"b{b}"]["cpu_ms"] / cell["cpu_ms"]
    print(f"CPU: {machine['cpu']['model']}; ISA {[k for k, v in machine['cpu']['isa'].items() if v]} "
          f"(source {machine['cpu']['isa_source']}, U8S8 kernel {machine['cpu']['u8s8_kernel']}); "
          f"threads {args.threads}; openvino {machine['versions']['openvino']}, "
          f"onnxruntime {machine['versions']['onnxruntime']}")
    head = f"{'configuration':<52} {'batch':>5} {'wall ms':>9} {'cpu ms':>8} {'x eager (cpu)':>14} {'x fp32 (cpu)':>13}"
    print(head + ("  accuracy" if test is not None else ""))
    for r in rows:
        for b in sizes:
            c = r[f"b{b}"]
            x_fp32 = f"{c['x_fp32_cpu']:.2f}x" if "x_fp32_cpu" in c else "-"
            acc = f"  {100 * r['accuracy']:.2f} %" if test is not None and b == sizes[-1] else ""
            print(f"{r['config']:<52} {b:>5} {c['wall_ms']:>9.3f} {c['cpu_ms']:>8.3f} "
                  f"{c.get('x_eager_cpu', float('nan')):>13.2f}x {x_fp32:>13}{acc}")
    write_json_atomic(args.json, {"machine": machine, "export": str(args.export), "threads": args.threads,
                                  "batches": sizes, "rounds": args.rounds, "rows": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
