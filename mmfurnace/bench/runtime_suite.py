"""The runtime benchmark as one call: source (export, checkpoint or fresh model) -> batches ->
every runtime x precision -> table, JSON, PNG. Used by `mmfurnace bench` and
benchmarks/engines.py."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmfurnace.data.config import DataConfig
from mmfurnace.data.info import DatasetInfo


def default_info(data: DataConfig) -> DatasetInfo:
    """The DatasetInfo of the default digits-av data settings (10 classes)."""
    return DatasetInfo(
        modalities=tuple(sorted(data.modalities)),
        num_classes=10,
        multilabel=False,
        class_names=tuple(str(i) for i in range(10)),
        input_shapes={
            "image": (data.image.channels, *data.image.size),
            "audio": (None, data.audio.n_mfcc),
            "text": (None,),
        },
        input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
        vocab_size=data.text.vocab_size,
    )


def default_lengths(data: DataConfig) -> dict[str, int]:
    """Full-length audio frames and text tokens for the data settings (the worst case)."""
    seconds = data.audio.max_seconds or 2.0
    frames = int(seconds * data.audio.sample_rate) // data.audio.hop_length + 1
    return {"audio": frames, "text": data.text.max_length}


def fresh_export(out: Path, fusion: str) -> Path:
    """Build the default model (random weights: speed does not depend on them) and export it."""
    from mmfurnace.export import export_model
    from mmfurnace.models import ModelConfig, build_model

    data = DataConfig()
    config = ModelConfig(fusion=fusion)
    torch.manual_seed(0)
    model = build_model(config, default_info(data))
    prep = data.model_dump(mode="json")
    return export_model(model, default_info(data), out, config=config,
                        preprocessing={k: prep[k] for k in ("dataset", "image", "audio", "text")})


def run_runtime_bench(
    source: Path | None,
    *,
    fusion: str = "cross_attention",
    batch_sizes: Sequence[int] = (1, 8, 32, 128),
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    iters: int = 20,
    rounds: int = 5,
    warmup: int = 3,
    threads: int | None = None,
    lengths: dict[str, int] | None = None,
    json_path: Path | None = None,
    png_path: Path | None = None,
) -> dict[str, Any]:
    """Benchmark every available runtime on ``source``: an export folder (with export.json),
    a training checkpoint (exported to a temporary folder first) or None (a fresh default
    model of ``fusion``). Prints the table; writes JSON/PNG when paths are given."""
    from mmfurnace.bench.runtime_report import best_cpu_vs_eager, plot_runtimes, print_table
    from mmfurnace.bench.runtimes import bench_runtimes
    from mmfurnace.export import export_checkpoint, load_spec, make_example_batch

    with tempfile.TemporaryDirectory(prefix="mmfurnace-runtimes-") as tmp:
        if source is None:
            export_dir, label = fresh_export(Path(tmp) / "export", fusion), f"fresh {fusion}"
        elif (Path(source) / "export.json").is_file():
            export_dir, label = Path(source), str(source)
        else:
            export_dir, label = export_checkpoint(source, Path(tmp) / "export"), str(source)
        spec = load_spec(export_dir)
        full = default_lengths(DataConfig())
        full.update(lengths or {})
        # every modality present in every row, padded to the full length: the worst case
        batches = {
            b: make_example_batch(spec.info, b, lengths=full, absent=False, seed=b,
                                  modalities=spec.modalities)
            for b in batch_sizes
        }
        result = bench_runtimes(export_dir, batches, runtimes=list(runtimes) if runtimes else None,
                                precisions=list(precisions), warmup=warmup, iters=iters,
                                rounds=rounds, threads=threads)
    result["settings"]["source"] = label
    print_table(result)
    if 32 in batch_sizes:
        result["best_cpu_vs_eager_b32"] = best_cpu_vs_eager(result, 32)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if png_path:
        plot_runtimes(result, png_path)
    return result
