"""Pretrained encoders on CPU: the frozen-feature cache, and INT8 on the full pretrained model.

    python benchmarks/pretrained.py [--data data/digits-av-224-small] [--limit-per-class 15]
        [--epochs 2] [--rounds 10] [--threads 1] [--out runs/pretrained_bench]
        [--json report/pretrained.json]

The model is configs/pretrained.yaml: EfficientNet-Lite0 (image, 224x224 RGB) and
all-MiniLM-L6-v2 (text), both frozen, a trainable 1-D CNN on the audio MFCCs, and
cross-attention fusion, on digits-av built at 224x224 RGB with MiniLM's tokenizer (built once
into ``--data`` when missing; ``--limit-per-class 15`` gives ~360 samples).

Part 1, training (the same run, the same seed and data, every run on ``--threads`` threads):
  (a) feature cache on, empty cache: the build time per encoder, then the epochs;
  (b) feature cache off: the frozen encoders run inside every training step;
  (c) feature cache on again: the entries are found (hashing the inputs only), then the epochs.
Epoch time is the recipe's ``epoch_time_s`` (the training loop, without validation and
checkpointing). (a) and (b) train the same weights: their accuracies must agree.

Part 2, inference of (a)'s trained model, all variants interleaved in the same rounds on the
same real test rows: eager PyTorch FP32, ONNX Runtime FP32, ONNX Runtime INT8 dynamic,
ONNX Runtime INT8 static (min-max calibration on training batches); batch-1 latency and
batch-32 throughput, each as a ratio of eager FP32.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CONFIG = Path("configs/pretrained.yaml")


def build_data(root: Path, limit: int) -> None:
    from mmfurnace.config import load_run_config
    from mmfurnace.data.prepare import build_builtin

    if not (root / "packed" / "info.json").is_file():
        print(f"building digits-av at 224x224 RGB + MiniLM tokens into {root}", flush=True)
        build_builtin("digits-av", root, data_cfg=load_run_config(CONFIG).data, limit_per_class=limit)


def train_run(name: str, out: Path, data: Path, epochs: int, threads: int, cache: bool) -> dict[str, Any]:
    from mmfurnace.config import load_run_config
    from mmfurnace.train.logging import read_records
    from mmfurnace.train.recipe import train

    run = out / name
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_run_config(CONFIG, [
        f"data.root={data}", f"train.epochs={epochs}", f"train.out_dir={run}",
        f"train.threads={threads}", f"train.feature_threads={threads}",
        f"train.feature_cache={str(cache).lower()}", f"train.feature_cache_dir={out / 'features'}",
    ])
    started = time.perf_counter()
    result = train(cfg, progress=False)
    epochs_s = [r["epoch_time_s"] for r in read_records(run / "metrics.jsonl", "epoch")]
    start = read_records(run / "metrics.jsonl", "start")[0]
    return {
        "name": name, "feature_cache": cache, "wall_s": time.perf_counter() - started,
        "epoch_s": epochs_s, "median_epoch_s": statistics.median(epochs_s),
        "cache": start.get("feature_cache", {}),
        "val_accuracy": [h["val"]["accuracy"] for h in result.history],
        "test_accuracy": result.test_metrics["accuracy"], "checkpoint": str(run / "best"),
        "steps_per_epoch": start["steps_per_epoch"],
    }


def inference(checkpoint: Path, out: Path, rounds: int, threads: int) -> list[dict[str, Any]]:
    from mmfurnace.compress.api import measure_variants, parents, prepare, run_method

    ctx = prepare(checkpoint, out_dir=out, threads=threads)
    variants = parents(ctx, {"torch", "onnxruntime"})
    for method in ("int8-dynamic", "int8-static"):
        variants += run_method(ctx, method, {})
    rows = measure_variants(ctx, variants, rounds=rounds, latency_samples=16, throughput_batch=32)
    eager = rows[0]
    for r in rows:
        r["latency_x_eager"] = eager["p50_ms"] / r["p50_ms"]
        r["throughput_x_eager"] = r["throughput"] / eager["throughput"]
    return rows


def training_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | feature cache | cache build s (image / text) | hash inputs s | median epoch s | "
             "epoch × cached | val acc per epoch | test acc |", "|" + "---|" * 8]
    cached = next(r for r in runs if r["name"] == "c-cache-hit")["median_epoch_s"]
    for r in runs:
        c = r["cache"]
        build = " / ".join(f"{c[m]['build_s']:.1f}" for m in ("image", "text")) if c else "-"
        hashing = " / ".join(f"{c[m]['fingerprint_s']:.1f}" for m in ("image", "text")) if c else "-"
        lines.append(
            f"| {r['name']} | {'on' if r['feature_cache'] else 'off'} | {build} | {hashing} | "
            f"{r['median_epoch_s']:.2f} | {r['median_epoch_s'] / cached:.1f}× | "
            f"{', '.join(f'{a:.3f}' for a in r['val_accuracy'])} | {r['test_accuracy']:.3f} |")
    return "\n".join(lines)


def inference_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | backend | test acc | p50 ms (batch 1) | × eager | samples/s (batch 32) | "
             "× eager | size MB |", "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['backend']} | {r['accuracy']:.3f} | {r['p50_ms']:.1f} | "
            f"{r['latency_x_eager']:.2f}× | {r['throughput']:.1f} | {r['throughput_x_eager']:.2f}× | "
            f"{r['size_bytes'] / 1e6:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/digits-av-224-small"))
    p.add_argument("--limit-per-class", type=int, default=15, help="digits-av images per class")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10, help="interleaved inference timing rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads everywhere")
    p.add_argument("--out", type=Path, default=Path("runs/pretrained_bench"))
    p.add_argument("--json", type=Path, default=Path("report/pretrained.json"))
    p.add_argument("--skip-inference", action="store_true")
    args = p.parse_args(argv)

    from mmfurnace.bench.machine import machine_info
    from mmfurnace.train.checkpoint import write_json_atomic

    build_data(args.data, args.limit_per_class)
    shutil.rmtree(args.out / "features", ignore_errors=True)  # (a) starts from an empty cache
    runs = []
    for name, cache in (("a-cache-build", True), ("b-no-cache", False), ("c-cache-hit", True)):
        print(f"training {name}", flush=True)
        runs.append(train_run(name, args.out, args.data, args.epochs, args.threads, cache))
    rows = [] if args.skip_inference else inference(Path(runs[0]["checkpoint"]), args.out / "int8", args.rounds,
                                                    args.threads)
    machine = machine_info()
    flags = " ".join(f for f, on in machine["cpu"].get("isa", {}).items() if on)
    print()
    print(training_table(runs))
    if rows:
        print()
        print(inference_table(rows))
    print(f"\nCPU: {machine['cpu'].get('model')}; ISA: {flags or '-'}; torch threads {args.threads}; "
          f"load average {machine['load_average']}")
    write_json_atomic(args.json, {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                  "training": runs, "inference": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
