"""How much INT8 can speed up an exported model on ONNX Runtime, before quantizing anything.

    python benchmarks/int8_headroom.py EXPORT_DIR [--int8 QUANTIZED_EXPORT_DIR] [--batch 32]
        [--data-root data/digits-av] [--json report/int8_headroom.json]

Profiles the FP32 graph with ORT's own profiler (CPU EP, 1 thread, all graph optimisations) on
a real validation batch and sums kernel time per operator type. Only the operators INT8 has
kernels for (Conv, MatMul, Gemm and their fused forms) can get faster; the rest (layer norms,
masking, transposes, softmax, adds) stays in float. Amdahl's law then bounds the speed-up of
any INT8 variant, however fast its INT8 kernels, by ``1 / (1 - quantizable share)`` of kernel
time. With ``--int8`` the quantized export is profiled the same way, so the per-operator table
shows where its time went (the QuantizeLinear/DequantizeLinear it added included).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

QUANTIZABLE = ("Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "NhwcFusedConv",
               "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "QGemm")


def profile_ops(export_dir: Path, batch: Any, runs: int) -> dict[str, Any]:
    """Kernel ms per run by operator type for the export's full-model ONNX graph."""
    import onnxruntime as ort

    from mmfurnace.export.runtimes import RUNTIMES

    runtime = RUNTIMES["onnxruntime"](export_dir, threads=1, optimized_model=False)
    feed = runtime.onnx_feed(runtime.feed(batch))
    with tempfile.TemporaryDirectory(prefix="mmf-int8-headroom-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(runtime.onnx_path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    by_module: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            by_module[module_of(event["name"])] += event["dur"]
    total = sum(by_op.values())
    quantizable = sum(v for k, v in by_op.items() if k in QUANTIZABLE)
    return {
        "kernel_ms_per_run": round(total / runs / 1000, 3),
        "ops_ms_per_run": {k: round(v / runs / 1000, 3) for k, v in by_op.most_common()},
        "modules_ms_per_run": {k: round(v / runs / 1000, 3) for k, v in by_module.most_common()},
        "quantizable_share": round(quantizable / total, 3) if total else 0.0,
        "amdahl_bound": round(total / (total - quantizable), 2) if total > quantizable else float("inf"),
    }


def module_of(node: str) -> str:
    """The model part an ONNX node belongs to, from the module path the exporter writes into
    node names ("/model/image/stem/stem.0/Conv_kernel_time" -> "image"); nodes that
    ORT's optimiser created or that sit at the top level -> "(top level)"."""
    parts = node.removesuffix("_kernel_time").strip("/").split("/")
    if len(parts) < 3 or parts[0] != "model":
        return "(top level)"
    return parts[1]


def print_profile(title: str, prof: dict[str, Any], top: int = 12) -> None:
    print(f"\n{title}: {prof['kernel_ms_per_run']:.2f} ms of kernels per batch")
    for op, ms in list(prof["ops_ms_per_run"].items())[:top]:
        share = ms / prof["kernel_ms_per_run"] if prof["kernel_ms_per_run"] else 0.0
        mark = "  INT8-able" if op in QUANTIZABLE else ""
        print(f"  {op:<26} {ms:7.3f} ms {share:6.1%}{mark}")
    print("  by model part: " + ", ".join(
        f"{part} {ms / prof['kernel_ms_per_run']:.0%}" for part, ms in prof["modules_ms_per_run"].items()
        if prof["kernel_ms_per_run"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export", type=Path, help="FP32 export folder (mmfurnace export)")
    p.add_argument("--int8", type=Path, default=None, help="a quantized export of the same model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--data-root", type=Path, default=Path("data/digits-av"))
    p.add_argument("--json", type=Path, default=Path("report/int8_headroom.json"))
    args = p.parse_args(argv)

    from mmfurnace.bench.machine import machine_info
    from mmfurnace.data.config import DataConfig
    from mmfurnace.data.datasets import first_batch
    from mmfurnace.export import load_spec
    from mmfurnace.io import write_json_atomic

    spec = load_spec(args.export)
    data = DataConfig(root=args.data_root, modalities=list(spec.modalities))
    batch = first_batch(data, "valid", args.batch, spec.modalities)
    report: dict[str, Any] = {"machine": machine_info(), "export": str(args.export), "batch": args.batch}
    report["fp32"] = profile_ops(args.export, batch, args.runs)
    print_profile("FP32", report["fp32"])
    print(f"\nINT8-able share of FP32 kernel time: {report['fp32']['quantizable_share']:.1%} -> no INT8 "
          f"variant can beat {report['fp32']['amdahl_bound']:.2f}x on kernel time (Amdahl), "
          "before QDQ overhead")
    if args.int8 is not None:
        report["int8"] = profile_ops(args.int8, batch, args.runs)
        print_profile("INT8", report["int8"])
        ratio = report["fp32"]["kernel_ms_per_run"] / report["int8"]["kernel_ms_per_run"]
        report["int8_kernel_speedup"] = round(ratio, 2)
        print(f"\nINT8 kernel-time speed-up: {ratio:.2f}x")
    write_json_atomic(args.json, report)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
