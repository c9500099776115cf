"""Compress a trained checkpoint with several methods and measure every variant in ONE run.

    python benchmarks/compression.py --checkpoint runs/default/best \
        --methods fp16 bf16 int8-dynamic int8-static int8-static:calibration=entropy \
                  qat sensitivity prune-unstructured prune-channel:sparsity=0.5 distill \
        --json report/compression_bench.json --out report

A method spec is ``name[:key=value,key=value]`` (values parsed as YAML: ``sparsity=0.5``,
``fusion=late``). All variants and both FP32 parents (eager torch, onnxruntime) are measured
together, interleaved, on the same real test inputs, so the ratios are comparable. Prints a
table, the brief's targets (best INT8 >= 2x FP32 throughput at batch 32 on the same backend
with <= 1 pt loss; 50 % channel pruning >= 1.6x with <= 1.5 pt; student >= 3x with <= 2 pt),
marks each variant PASS/FAILED against its method family's accuracy budget (--budget to
override), and writes JSON with the machine (CPU model, ISA flags: avx2 / avx512_vnni / amx,
the U8S8 kernel) next to every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmfurnace.compress.api import METHODS, measure_variants, parents, prepare, run_method
from mmfurnace.compress.gate import apply_gate, budget_for
from mmfurnace.compress.measure import cpu_info
from mmfurnace.compress.report import MD_COLUMNS, append_report, checkpoint_title, markdown_table
from mmfurnace.errors import ConfigError
from mmfurnace.typed_config import safe_load

DEFAULT_METHODS = (
    "fp16", "bf16", "int8-dynamic", "int8-static", "int8-static:calibration=percentile",
    "int8-static:calibration=entropy", "qat", "sensitivity", "prune-unstructured",
    "prune-channel:sparsity=0.5", "distill",
)
TARGETS = {  # (speed-up at batch 32 at least, accuracy drop at most in points)
    "int8": (2.0, 1.0),
    "prune-channel-50": (1.6, 1.5),
    "student": (3.0, 2.0),
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"prune-channel:sparsity=0.5,finetune_epochs=3"`` -> ("prune-channel", {...})."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"method spec {spec!r}: option {item!r} is not key=value")
        options[key.strip()] = safe_load(value)
    return name.strip(), options


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the brief's targets against the measured rows (same-backend ratios)."""
    out = []
    int8 = [r for r in rows if r["backend"] == "onnxruntime" and str(r["variant"]).startswith(("int8", "qat"))
            and r.get("delta_pt") is not None and r["delta_pt"] >= -TARGETS["int8"][1]]
    best = max(int8, key=lambda r: r["speedup"], default=None)
    checks = [("best INT8 within 1 pt (onnxruntime)", best, TARGETS["int8"])]
    for key, variant, label in (("prune-channel-50", "pruned-channel-50", "50 % channel pruning"),
                                ("student", "student", "distilled student")):
        for backend in ("onnxruntime", "torch"):
            row = next((r for r in rows if r["variant"] == variant and r["backend"] == backend), None)
            checks.append((f"{label} ({backend})", row, TARGETS[key]))
    for label, row, (speed, drop) in checks:
        if row is None:
            out.append({"target": label, "status": "not run"})
            continue
        ok = row["speedup"] >= speed and row["delta_pt"] >= -drop
        out.append({"target": label, "variant": row["variant"], "speedup": row["speedup"],
                    "delta_pt": row["delta_pt"], "wanted": f">= {speed}x, >= -{drop} pt",
                    "status": "PASS" if ok else "FAIL"})
    return out


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="training checkpoint directory (e.g. runs/x/best)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="method specs name[:k=v,...]")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--out", type=Path, default=Path("report"), help="report directory (compression.md/.csv/png)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="read the data from here instead of the checkpoint's data.root")
    parser.add_argument("--work", type=Path, default=None, help="where variants are written (default: <out>/compression_variants)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and onnxruntime")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--latency-samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--budget", type=float, default=None,
                        help="accuracy points any variant may lose (default: its method family's: "
                             "INT8/fp16 1, pruning 1.5, student 2)")
    args = parser.parse_args(argv)

    specs = [parse_spec(s) for s in args.methods]
    work = args.work or args.out / "compression_variants"
    started = time.perf_counter()
    data_cfg = None
    if args.data_root is not None:
        from mmfurnace.train.checkpoint import load_model

        data_cfg = load_model(args.checkpoint)[1].config.data.model_copy(update={"root": args.data_root})
    ctx = prepare(args.checkpoint, out_dir=work, data_cfg=data_cfg, threads=args.threads)
    variants, timings, details = [], {}, {}
    ctx.fp32_export()  # once, shared by every onnxruntime variant
    for (name, options), spec in zip(specs, args.methods, strict=True):
        t0 = time.perf_counter()
        print(f"[{spec}] ...", file=sys.stderr, flush=True)
        ctx.out_dir = work / _slug(spec)  # the same method twice (other options) must not collide
        produced = run_method(ctx, name, options)
        taken = {(v.name, v.backend) for v in variants}
        for v in produced:
            v.notes["method"] = spec
            if (v.name, v.backend) in taken:
                v.name = f"{v.name} ({spec.partition(':')[2]})"
        variants += produced
        timings[spec] = time.perf_counter() - t0
        details[spec] = dict(ctx.details)
        ctx.details.clear()
    rows = measure_variants(ctx, parents(ctx, {"torch", "onnxruntime"}) + variants, rounds=args.rounds,
                            latency_samples=args.latency_samples, throughput_batch=args.batch)
    for row in rows:
        row.update(run="benchmark", checkpoint=str(ctx.meta.path), method=row.pop("method", "parent"))
    for (name, _), spec in zip(specs, args.methods, strict=True):  # each method against its family's budget
        apply_gate([r for r in rows if r["method"] == spec], budget_for(METHODS[name].family, args.budget))
    machine = cpu_info()
    try:
        from mmfurnace.bench.machine import machine_info

        machine["machine_info"] = machine_info()
    except ImportError:  # the bench package is optional here
        pass
    checks = targets(rows)
    print(markdown_table(rows, MD_COLUMNS))
    print()
    for c in checks:
        detail = "" if c["status"] == "not run" else f" {c['variant']}: {c['speedup']:.2f}x, {c['delta_pt']:+.2f} pt (want {c['wanted']})"
        print(f"{c['status']:7} {c['target']}{detail}")
    print(f"\nmachine: {machine['cpu']}; ISA {' '.join(machine['isa'])}; threads {args.threads or torch.get_num_threads()}")
    append_report(args.out, rows, title=f"{checkpoint_title(ctx.meta.path)}: benchmark ({', '.join(args.methods)})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "compression", "checkpoint": str(ctx.meta.path), "machine": machine,
            "threads": args.threads or torch.get_num_threads(), "rounds": args.rounds,
            "throughput_batch": args.batch, "eval_split": ctx.eval_split, "rows": rows, "targets": checks,
            "method_seconds": timings, "details": details, "wall_s": time.perf_counter() - started,
        }, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
