"""Loader throughput: decoding raw files every epoch vs reading the packed, memory-mapped cache.

    python benchmarks/loader_throughput.py --tiny [--json out.json]
    python benchmarks/loader_throughput.py --root data/digits-av/raw [--packed DIR]
        [--split train] [--batch-size 64] [--workers 2] [--epochs 3] [--json out.json]

Both paths read the same samples of one manifest, with the same loader settings, in the same
run: (a) ManifestDataset decodes PNG/WAV and tokenizes on every access; (b) PackedDataset
reads the preprocessed tensors. When no --packed cache is given, (b)'s cache is built from the
manifest first (its build time is reported, not counted in (b)). One untimed warm-up epoch
per path starts the workers and warms the page cache; samples/s is over the timed epochs.
The main process runs with ``--threads`` torch threads (default 1, as in DataLoader workers).
--tiny synthesizes a small raw dataset (PNG, WAV, text) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from mmfurnace.data.cache import PackedDataset, pack_datasets
from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import build_preprocessors
from mmfurnace.data.loader import make_loader
from mmfurnace.data.manifest import ManifestDataset, read_manifest


def synthesize(folder: Path, n: int, seed: int = 0) -> Path:
    """A small raw dataset: 28x28 PNG, 1 s 16 kHz WAV, a short text; some modalities missing."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    (folder / "wav").mkdir()
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = []
    t = np.arange(16000) / 16000
    for i in range(n):
        label = int(rng.integers(10))
        row: dict[str, Any] = {
            "id": f"s{i}",
            "split": "train" if i % 10 < 8 else ("valid" if i % 10 == 8 else "test"),
        }
        image = rng.integers(0, 60, size=(28, 28)).astype(np.uint8)
        image[4 + label : 8 + label * 2, 6:22] = 255
        Image.fromarray(image, mode="L").save(folder / "img" / f"{i}.png")
        row["image"] = f"img/{i}.png"
        if i % 7 != 3:  # about one in seven has no audio
            wave = 0.3 * np.sin(2 * np.pi * (200 + 60 * label) * t) + 0.01 * rng.standard_normal(
                t.size
            )
            sf.write(folder / "wav" / f"{i}.wav", wave.astype(np.float32), 16000)
            row["audio"] = f"wav/{i}.wav"
        if i % 5 != 2:  # about one in five has no text
            row["text"] = f"the number {words[label]} please"
        row["label"] = label
        rows.append(row)
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def measure(dataset: Any, modalities: list[str], args: argparse.Namespace) -> dict[str, float]:
    loader = make_loader(
        dataset,
        modalities=modalities,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        seed=args.seed,
    )
    checksum = 0.0
    for batch in loader:  # warm-up: worker start-up and page cache are not what we compare
        checksum += float(batch.labels.sum())
    samples = 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in loader:
            samples += len(batch)
            checksum += float(batch.labels.sum())  # touch the batch so nothing is skipped
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def resolve_manifest(root: Path) -> Path:
    return root / "manifest.jsonl" if root.is_dir() else root


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    manifest = (
        synthesize(workdir / "raw", args.samples)
        if args.root is None
        else resolve_manifest(args.root)
    )
    records = read_manifest(manifest)
    modalities = [m for m in ("audio", "image", "text") if any(r.has(m) for r in records)]
    cfg = DataConfig(dataset="manifest", root=manifest, modalities=modalities)
    pre = build_preprocessors(cfg, modalities, manifest=manifest)
    raw = ManifestDataset(manifest, preprocessors=pre, split=args.split)

    build_seconds = None
    packed_dir = args.packed
    if packed_dir is None:
        packed_dir = workdir / "packed"
        splits = sorted({r.split for r in records})
        datasets = {s: ManifestDataset(manifest, preprocessors=pre, split=s) for s in splits}
        start = time.perf_counter()
        pack_datasets(packed_dir, datasets)
        build_seconds = time.perf_counter() - start
    packed = PackedDataset(packed_dir, args.split, modalities=modalities)
    if len(packed) != len(raw):
        sys.exit(
            f"{packed_dir}: split {args.split!r} has {len(packed)} samples, the manifest {len(raw)}"
        )

    results = {"raw": measure(raw, modalities, args), "packed": measure(packed, modalities, args)}
    return {
        "benchmark": "loader_throughput",
        "machine": machine(),
        "settings": {
            "manifest": str(manifest) if args.root is not None else "synthesized (--tiny)",
            "split": args.split,
            "samples_in_split": len(raw),
            "modalities": modalities,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "epochs": args.epochs,
            "seed": args.seed,
        },
        "pack_build_seconds": build_seconds,
        "results": results,
        "speedup_packed_over_raw": results["packed"]["samples_per_s"]
        / results["raw"]["samples_per_s"],
    }


def print_report(report: dict[str, Any]) -> None:
    m, s = report["machine"], report["settings"]
    print(
        f"machine : {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch {m['torch']} ({m['torch_threads']} threads), python {m['python']}"
    )
    print(
        f"data    : {s['manifest']}, split {s['split']} ({s['samples_in_split']} samples), "
        f"modalities {','.join(s['modalities'])}"
    )
    print(
        f"loader  : batch {s['batch_size']}, workers {s['workers']}, {s['epochs']} timed epochs "
        "after 1 warm-up"
    )
    if report["pack_build_seconds"] is not None:
        print(f"packing : {report['pack_build_seconds']:.2f} s to build the cache (all splits)")
    print()
    print(f"{'path':<28}{'samples':>10}{'seconds':>10}{'samples/s':>12}")
    names = {"raw": "raw files (ManifestDataset)", "packed": "packed (PackedDataset)"}
    for key, r in report["results"].items():
        print(f"{names[key]:<28}{r['samples']:>10}{r['seconds']:>10.3f}{r['samples_per_s']:>12.0f}")
    print(f"\npacked / raw: {report['speedup_packed_over_raw']:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, help="a manifest .jsonl or the folder holding manifest.jsonl"
    )
    parser.add_argument("--packed", type=Path, help="an existing packed cache of the same manifest")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="synthesize a small raw dataset (default without --root)",
    )
    parser.add_argument(
        "--samples", type=int, default=400, help="samples to synthesize with --tiny"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in this process (0: leave torch's default). Per-sample "
        "decoding is made of tiny ops that gain nothing from threads, and on a busy machine "
        "extra threads make them much slower; DataLoader workers use 1 thread each anyway.",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.root = None
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # this script is the top level: it owns the setting
    with tempfile.TemporaryDirectory(prefix="mmfurnace-loader-bench-") as tmp:
        report = run(args, Path(tmp))
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
