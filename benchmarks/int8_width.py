"""INT8 speed-up against model width: the demo's cross-attention recipe at several CNN widths.

    python benchmarks/int8_width.py [--widths 16,48] [--epochs 12] [--fusion-epochs 5]
        [--config configs/default.yaml] [--data-root data/digits-av] [--out runs/int8_width]
        [--json report/int8_width.json]

Width w: the image CNN's first conv has w channels (then 2w, 4w) and the audio CNN is 4w wide;
the text transformer and the fusion keep the config's sizes. w=16 is the demo model. Each width
is trained like the demo (unimodal encoders first, then the fusion starting from them), then
quantized with INT8 static (entropy calibration) and measured beside its FP32 parent on ONNX
Runtime, in the same run, on the same test inputs (batch 32, 1 thread).

Why: INT8 kernels speed up Conv and MatMul only. In a small model the float work between them
(per-channel norms, masking, softmax, adds) is a large share, and Amdahl's law caps any INT8
variant below 2x however fast its kernels (``benchmarks/int8_headroom.py``); as the convs widen
their share grows and so does the INT8 gain. The table shows where INT8 starts to pay and
what it costs in accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # int8_headroom, beside this file

from int8_headroom import profile_ops  # noqa: E402

MODALITIES = ("audio", "image", "text")


def width_overrides(width: int) -> list[str]:
    return [f"model.encoders.image.channels={width}", f"model.encoders.audio.dim={4 * width}"]


def train_width(config: Path, overrides: list[str], width: int, out: Path, *, epochs: int,
                fusion_epochs: int) -> Path:
    """Unimodal audio/image/text runs, then cross-attention starting from their encoders.
    Returns the fusion run's best checkpoint; runs already complete are reused."""
    from mmfurnace.config import load_run_config
    from mmfurnace.train.recipe import train

    base = [*overrides, *width_overrides(width), "train.threads=1"]
    for m in MODALITIES:
        run = out / f"unimodal-{m}"
        if not (run / "best").is_dir():
            print(f"[width {width}] unimodal {m}, {epochs} epochs", flush=True)
            train(load_run_config(config, [*base, f"data.modalities=[{m}]", "model.fusion=late",
                                           "train.modality_dropout={}", f"train.epochs={epochs}",
                                           f"train.out_dir={run}"]), progress=False)
    run = out / "cross_attention"
    if not (run / "best").is_dir():
        print(f"[width {width}] cross_attention from the unimodal encoders, {fusion_epochs} epochs", flush=True)
        warm = [f"train.init_encoders.{m}={out / f'unimodal-{m}' / 'best'}" for m in MODALITIES]
        train(load_run_config(config, [*base, "model.fusion=cross_attention", f"train.epochs={fusion_epochs}",
                                       f"train.out_dir={run}", *warm]), progress=False)
    return run / "best"


def measure_width(checkpoint: Path, out: Path, data_cfg: Any, *, rounds: int, profile_runs: int) -> dict[str, Any]:
    """INT8 static of ``checkpoint`` vs its FP32 parent on ONNX Runtime, plus the FP32 graph's
    INT8-able share of kernel time (the Amdahl bound) on a real validation batch of ``data_cfg``."""
    from mmfurnace.compress.api import compress
    from mmfurnace.data.datasets import first_batch
    from mmfurnace.export import load_spec

    result = compress(checkpoint, "int8-static", out_dir=out, report_dir=None, threads=1, rounds=rounds,
                      calibration="entropy")
    fp32 = next(r for r in result.rows if r["variant"] == "fp32-onnxruntime")
    int8 = next(r for r in result.rows if r["variant"].startswith("int8-static"))
    export = out / "fp32-onnxruntime"
    spec = load_spec(export)
    batch = first_batch(data_cfg, "valid", 32, spec.modalities)
    prof = profile_ops(export, batch, profile_runs)
    return {
        "params": fp32["params"], "macs": fp32["macs"],
        "fp32_accuracy": fp32["accuracy"], "int8_accuracy": int8["accuracy"],
        "delta_pt": 100 * (int8["accuracy"] - fp32["accuracy"]),
        "fp32_samples_per_s": fp32["throughput"], "int8_samples_per_s": int8["throughput"],
        "speedup": int8["speedup"], "int8_able_share": prof["quantizable_share"],
        "amdahl_bound": prof["amdahl_bound"], "isa": fp32.get("isa"),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| width | params | MACs/sample | FP32 acc % | INT8 Δ pt | FP32 samples/s | INT8 samples/s "
            "| INT8 × FP32 | INT8-able share | Amdahl bound |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['params'] / 1e3:.0f}k | {r['macs'] / 1e6:.1f}M | {100 * r['fp32_accuracy']:.2f} "
            f"| {r['delta_pt']:+.2f} | {r['fp32_samples_per_s']:.0f} | {r['int8_samples_per_s']:.0f} "
            f"| **{r['speedup']:.2f}×** | {r['int8_able_share']:.0%} | {r['amdahl_bound']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="16,48", help="image CNN first-conv widths, comma-separated")
    p.add_argument("--epochs", type=int, default=12, help="epochs of each unimodal run")
    p.add_argument("--fusion-epochs", type=int, default=5)
    p.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    p.add_argument("--data-root", type=Path, default=None, help="override the config's data.root")
    p.add_argument("--out", type=Path, default=Path("runs/int8_width"))
    p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds per variant")
    p.add_argument("--profile-runs", type=int, default=30)
    p.add_argument("--json", type=Path, default=Path("report/int8_width.json"))
    args = p.parse_args(argv)

    from mmfurnace.bench.machine import machine_info
    from mmfurnace.config import load_run_config
    from mmfurnace.io import write_json_atomic

    overrides = [f"data.root={args.data_root}"] if args.data_root is not None else []
    data_cfg = load_run_config(args.config, overrides).data
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        start = time.perf_counter()
        folder = args.out / f"width{width}"
        checkpoint = train_width(args.config, overrides, width, folder / "runs", epochs=args.epochs,
                                 fusion_epochs=args.fusion_epochs)
        row = {"width": width, **measure_width(checkpoint, folder / "int8", data_cfg, rounds=args.rounds,
                                               profile_runs=args.profile_runs)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"[width {width}] INT8 {row['speedup']:.2f}x FP32, {row['delta_pt']:+.2f} pt ({row['seconds']} s)",
              flush=True)
    print()
    print(format_table(rows))
    print(f"\nCPU ISA: {' '.join(rows[0]['isa'] or []) if rows else '-'}; ONNX Runtime CPU, 1 thread, batch 32")
    write_json_atomic(args.json, {"machine": machine_info(), "rows": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
