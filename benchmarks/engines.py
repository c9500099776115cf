"""Inference engines: eager vs torch.compile vs TorchScript vs ONNX Runtime vs OpenVINO (vs TensorRT).

    python benchmarks/engines.py --fresh [--fusion cross_attention] [--json out.json] [--png out.png]
    python benchmarks/engines.py --export DIR [--batch-sizes 1,8,32,128] [--iters 20]
        [--backends eager,onnxruntime] [--precisions fp32,bf16] [--threads N]

--fresh builds the default model (ModelConfig(), default data settings: 1x28x28 image, 2 s of
20-MFCC audio = 201 frames, 32 text tokens), exports it to a temporary folder and benchmarks
that; weights are random, which does not change the speed. Every available backend x precision
runs in one process, interleaved round by round (see mmfurnace.bench.engines). Prints the
machine, a table (latency p50/p95/p99 at batch 1, samples/s per batch size, ratio to eager
FP32 at batch 32) and the best CPU backend's ratio to eager FP32 at batch 32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmfurnace.bench.engine_suite import run_engine_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, help="an export directory (with export.json)")
    source.add_argument(
        "--fresh", action="store_true", help="build + export the default model first"
    )
    parser.add_argument("--fusion", default="cross_attention", help="fusion of the --fresh model")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument(
        "--iters", type=int, default=20, help="timed calls per backend and batch size"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds the calls are split into"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", default=None, help="comma list (default: all available)")
    parser.add_argument("--precisions", default="fp32", help="comma list of fp32,bf16,fp16,int8")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads for every backend"
    )
    parser.add_argument(
        "--audio-frames", type=int, default=None, help="default: from the data settings (201)"
    )
    parser.add_argument(
        "--text-tokens", type=int, default=None, help="default: from the data settings (32)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--png", type=Path, help="write a bar chart here")
    args = parser.parse_args(argv)

    lengths = {}
    if args.audio_frames:
        lengths["audio"] = args.audio_frames
    if args.text_tokens:
        lengths["text"] = args.text_tokens
    result = run_engine_bench(
        None if args.fresh else args.export,
        fusion=args.fusion,
        batch_sizes=[int(s) for s in args.batch_sizes.split(",") if s.strip()],
        backends=args.backends.split(",") if args.backends else None,
        precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        threads=args.threads,
        lengths=lengths,
        json_path=args.json,
        png_path=args.png,
    )
    if "best_cpu_vs_eager_b32" in result:
        print(f"best CPU backend vs eager FP32 at batch 32: {result['best_cpu_vs_eager_b32']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
