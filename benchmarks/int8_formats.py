"""Accuracy of every INT8 format on this CPU, with and without ONNX Runtime's precision mode.

    python benchmarks/int8_formats.py prepare --checkpoint CKPT --out report/int8_formats
    python benchmarks/int8_formats.py eval report/int8_formats
    qemu-x86_64 -cpu EPYC-Rome .venv/bin/python benchmarks/int8_formats.py eval report/int8_formats

``prepare`` exports the checkpoint and quantizes it (static with ``--calibration``, and
dynamic) in each format — u8s8, u8s8-reduce-range, u8u8 — and saves the test split as ONNX
feeds; the graphs do not depend on the CPU that makes them. ``eval`` runs each one with plain
onnxruntime sessions (1 thread) on the CPU it runs on, with and without
``session.x64quantprecision``, and prints accuracy, Δ vs FP32 and SQNR of the logits against
FP32, next to the CPU's flags as the kernels see them (CPUID). Run ``eval`` under QEMU's
user-mode emulation (``apt-get install qemu-user``; ``-cpu EPYC-Rome`` or ``Haswell``: AVX2, no
AVX-512, no VNNI) to measure a CPU whose U8S8 kernels saturate: results are exact under
emulation, timings are not (and are not reported).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("u8s8", "u8s8-reduce-range", "u8u8")


def prepare(checkpoint: Path, out: Path, *, calibration: str, data_root: Path | None) -> dict[str, str]:
    from mmfurnace.compress.api import prepare as prepare_ctx
    from mmfurnace.compress.config import Int8DynamicConfig, Int8StaticConfig
    from mmfurnace.compress.quantize import quantize_onnx
    from mmfurnace.export import build_feed, load_spec

    data_cfg = None
    if data_root is not None:
        from mmfurnace.train.checkpoint import load_model

        data_cfg = load_model(checkpoint)[1].config.data.model_copy(update={"root": data_root})
    ctx = prepare_ctx(checkpoint, out_dir=out, data_cfg=data_cfg, threads=1)
    fp32 = ctx.fp32_export()
    batches = ctx.calibration(8)
    made = {"fp32": str(fp32)}
    for fmt in FORMATS:
        made[f"static-{calibration}-{fmt}"] = str(quantize_onnx(
            fp32, out / f"static-{calibration}-{fmt}", Int8StaticConfig(calibration=calibration, int8_format=fmt),
            calibration=batches))
        made[f"dynamic-{fmt}"] = str(quantize_onnx(fp32, out / f"dynamic-{fmt}", Int8DynamicConfig(int8_format=fmt)))
    spec = load_spec(fp32)
    arrays = {}
    for i, batch in enumerate(ctx.eval_batches):
        arrays.update({f"{i}/{k}": v for k, v in build_feed(spec, batch).items()})
        arrays[f"{i}/labels"] = batch.labels.numpy()
    np.savez(out / "test_feeds.npz", **arrays)
    (out / "variants.json").write_text(json.dumps(made, indent=1) + "\n")
    return made


def load_feeds(path: Path) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """The (ONNX feed, labels) batches ``prepare`` saved."""
    with np.load(path, allow_pickle=False) as saved:
        batches: dict[int, dict[str, np.ndarray]] = {}
        for key in saved.files:
            index, name = key.split("/", 1)
            batches.setdefault(int(index), {})[name] = saved[key]
    return [(b, b.pop("labels")) for _, b in sorted(batches.items())]


def _run(path: str, feeds: list, precision_mode: bool) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if precision_mode:
        options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(Path(path) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in f.items() if k in names})[0] for f, _ in feeds])


def evaluate(root: Path) -> dict[str, Any]:
    from mmfurnace.cpu import cpu_isa, cpu_model, u8s8_kernel

    variants = json.loads((root / "variants.json").read_text())
    feeds = load_feeds(root / "test_feeds.npz")
    labels = np.concatenate([labels for _, labels in feeds])
    reference = _run(variants["fp32"], feeds, False)
    fp32_acc = float((reference.argmax(1) == labels).mean())
    isa = cpu_isa()
    rows = []
    for name, path in variants.items():
        for mode in (False, True):
            logits = _run(path, feeds, mode)
            acc = float((logits.argmax(1) == labels).mean())
            noise = float(((reference - logits) ** 2).sum())
            rows.append({"variant": name, "precision_mode": mode, "accuracy": acc, "delta_pt": 100 * (acc - fp32_acc),
                         "sqnr_db": float("inf") if noise == 0 else float(10 * np.log10((reference ** 2).sum() / noise))})
    return {"cpu": cpu_model(), "isa": isa.listed(), "isa_source": isa.source, "u8s8_kernel": u8s8_kernel(isa),
            "test_samples": int(len(labels)), "rows": rows}


def print_table(result: dict[str, Any]) -> None:
    print(f"CPU {result['cpu']}: {', '.join(result['isa'])} (from {result['isa_source']}; ONNX Runtime's U8S8 "
          f"kernel: {result['u8s8_kernel']}); {result['test_samples']} test samples")
    print(f"{'variant':<34} {'precision mode':>14} {'acc %':>7} {'Δ pt':>7} {'SQNR dB':>8}")
    for r in result["rows"]:
        print(f"{r['variant']:<34} {'on' if r['precision_mode'] else 'off':>14} {100 * r['accuracy']:>7.2f} "
              f"{r['delta_pt']:>+7.2f} {r['sqnr_db']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="export + quantize in every format (on any CPU)")
    prep.add_argument("--checkpoint", type=Path, required=True)
    prep.add_argument("--out", type=Path, default=Path("report/int8_formats"))
    prep.add_argument("--calibration", default="entropy", choices=("minmax", "percentile", "entropy"))
    prep.add_argument("--data-root", type=Path, default=None, help="the data, if not at the checkpoint's data.root")
    ev = sub.add_parser("eval", help="accuracy of each variant on this CPU")
    ev.add_argument("root", type=Path)
    ev.add_argument("--json", type=Path, default=None, help="default: ROOT/eval-<U8S8 kernel>.json")
    args = p.parse_args(argv)
    if args.command == "prepare":
        made = prepare(args.checkpoint, args.out, calibration=args.calibration, data_root=args.data_root)
        print("\n".join(f"{k}: {v}" for k, v in made.items()))
        return 0
    from mmfurnace.train.checkpoint import write_json_atomic

    result = evaluate(args.root)
    print_table(result)
    path = args.json or args.root / f"eval-{result['u8s8_kernel']}.json"
    write_json_atomic(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
