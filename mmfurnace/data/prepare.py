"""Turn raw files into a ready dataset: raw build, tokenizer, packed cache, summary.

A built dataset folder looks like::

    root/raw/manifest.jsonl, images/, audio/, tokenizer.json   (decodable raw files)
    root/packed/<modality>.npy, index.npz, info.json          (preprocessed, memory-mapped)
    root/packed/preprocessing.json, tokenizer.json            (what a deployment needs)

The tokenizer is trained once and saved: WordPiece training is not deterministic between
calls, so every later reader (and the server) must load this file, never retrain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.utils.data import ConcatDataset, DataLoader

from mmfurnace.data.cache import read_header, verify_packed, write_packed
from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import PACKED_PREPROCESSING as PREPROCESSING_FILE
from mmfurnace.data.datasets import TOKENIZER_FILE, build_preprocessors, packed_root
from mmfurnace.data.manifest import ManifestDataset, read_manifest
from mmfurnace.errors import ConfigError
from mmfurnace.io import json_text, write_atomic
from mmfurnace.registry import Registry
from mmfurnace.threads import torch_threads
from mmfurnace.typed_config import parse

BUILTINS: Registry[Callable[..., Path]] = Registry("built-in dataset")

__all__ = [
    "BUILTINS", "build_builtin", "pack_manifest", "packed_root", "print_build_summary",
    "print_summary",
]  # fmt: skip


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


@contextmanager
def _stage_progress(name: str) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage."""
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{name}: {stage}", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


@BUILTINS.register("digits-av")
def _digits_av_raw(
    out: Path, *, seed: int, force: bool, limit_per_class: int | None, options: Mapping[str, Any]
) -> Path:
    from mmfurnace.data.builtin.digits_av import build_digits_av_raw

    if options:
        raise ConfigError(f"digits-av takes no build options, got {', '.join(sorted(options))}")
    with _stage_progress("digits-av") as report:
        return build_digits_av_raw(
            out, seed=seed, progress=report, overwrite=force, limit_per_class=limit_per_class
        )


@BUILTINS.register("fsdd-mnist")
def _fsdd_mnist_raw(
    out: Path, *, seed: int, force: bool, limit_per_class: int | None, options: Mapping[str, Any]
) -> Path:
    from mmfurnace.data.builtin.fsdd_mnist import FsddMnistOptions, build_fsdd_mnist_raw

    opts = parse(FsddMnistOptions, dict(options), source="fsdd-mnist build options")
    with _stage_progress("fsdd-mnist") as report:
        return build_fsdd_mnist_raw(out, options=opts, seed=seed, overwrite=force,
                                    limit_per_class=limit_per_class, progress=report)  # fmt: skip


@BUILTINS.register("tuxpaint")
def _tuxpaint_raw(
    out: Path, *, seed: int, force: bool, limit_per_class: int | None, options: Mapping[str, Any]
) -> Path:
    from mmfurnace.data.builtin.tuxpaint import TuxpaintOptions, build_tuxpaint_raw

    opts = parse(TuxpaintOptions, dict(options), source="tuxpaint build options")
    with _stage_progress("tuxpaint") as report:
        return build_tuxpaint_raw(out, options=opts, seed=seed, overwrite=force,
                                  limit_per_class=limit_per_class, progress=report)  # fmt: skip


def build_builtin(
    name: str,
    out: Path,
    *,
    data_cfg: DataConfig,
    seed: int = 0,
    force: bool = False,
    limit_per_class: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Build built-in dataset ``name`` under ``out`` (raw files, then the packed cache).

    Existing parts are reused unless ``force``; ``limit_per_class`` builds a small version
    (tests, quick demo); ``options`` are the dataset's own build options (validated by its
    builder: fsdd-mnist's ``FsddMnistOptions``, tuxpaint's ``TuxpaintOptions``). The packed
    cache is (re)made from ``raw/`` with ``data_cfg``'s preprocessing, so packing again with
    other settings never re-reads the sources. Returns ``out``.
    """
    builder = BUILTINS[name]
    out = Path(out)
    manifest = out / "raw" / "manifest.jsonl"
    if force or not manifest.is_file():
        manifest = builder(out, seed=seed, force=force, limit_per_class=limit_per_class,
                           options=dict(options or {}))  # fmt: skip
    packed = out / "packed"
    if force or not (packed / "info.json").is_file():
        pack_manifest(manifest, packed, data_cfg=data_cfg)
    return out


def ensure_tokenizer(manifest: Path, data_cfg: DataConfig) -> Path:
    """The tokenizer file for ``manifest``: the configured one, or one trained on its train
    texts and saved beside it (once)."""
    if data_cfg.text.tokenizer is not None:
        from mmfurnace.data.text import tokenizer_file

        return tokenizer_file(data_cfg.text.tokenizer)
    path = manifest.parent / TOKENIZER_FILE
    if not path.is_file():
        from mmfurnace.data.text import build_wordpiece_tokenizer

        texts = [r.text for r in read_manifest(manifest) if r.split == "train" and r.text]
        if texts:
            tokenizer = build_wordpiece_tokenizer(
                texts, vocab_size=data_cfg.text.vocab_size, lowercase=data_cfg.text.lowercase
            )
            write_atomic(path, lambda tmp: tokenizer.save(str(tmp)))
    return path


def pack_manifest(manifest: Path, packed: Path, *, data_cfg: DataConfig) -> Path:
    """Preprocess every sample of ``manifest`` once and write the packed cache at ``packed``."""
    records = read_manifest(manifest)
    available = [m for m in ("audio", "image", "text") if any(r.has(m) for r in records)]
    modalities = sorted(set(available) & set(data_cfg.modalities))
    if not modalities:
        raise ConfigError(f"data.modalities {data_cfg.modalities}: {manifest} has only {available}")
    tokenizer_path = ensure_tokenizer(manifest, data_cfg) if "text" in modalities else None
    cfg = data_cfg.model_copy(update={"modalities": modalities})
    if tokenizer_path is not None:
        cfg.text = cfg.text.model_copy(update={"tokenizer": tokenizer_path})
    preprocessors = build_preprocessors(cfg, modalities, manifest=manifest)
    splits = sorted({r.split for r in records}, key=("train", "valid", "test").index)
    classes_file = manifest.parent / "classes.json"
    class_names = json.loads(classes_file.read_text()) if classes_file.is_file() else None
    datasets = [
        ManifestDataset(manifest, preprocessors=preprocessors, split=s, class_names=class_names)
        for s in splits
    ]
    split_names = [s for s, d in zip(splits, datasets, strict=False) for _ in range(len(d))]
    # Decoding is per sample: worker processes (one torch thread each) use every core.
    workers = min(4, os.cpu_count() or 1) if len(split_names) > 200 else 0
    stream = DataLoader(ConcatDataset(datasets), batch_size=None, num_workers=workers,
                        collate_fn=_identity)
    settings = {m: p.to_dict() for m, p in preprocessors.items()}
    extra = {PREPROCESSING_FILE: json_text(settings, sort_keys=False).encode()}
    if tokenizer_path is not None:
        extra[TOKENIZER_FILE] = Path(tokenizer_path).read_bytes()
    with _progress() as bar, torch_threads(1):
        task = bar.add_task("packing samples", total=len(split_names))
        write_packed(packed, stream, info=datasets[0].info, splits=split_names,
                     progress=lambda n: bar.update(task, completed=n), extra_files=extra)
    return packed


def _identity(sample: object) -> object:
    return sample


def print_summary(root: Path, console: Console | None = None) -> dict:
    """Print (and return) a summary of the packed dataset at ``root`` or ``root/packed``."""
    console = console or Console()
    packed = packed_root(Path(root))
    header = read_header(packed)
    summary = verify_packed(packed)
    info = header["info"]
    table = Table(title=f"dataset {packed}")
    table.add_column("modality")
    table.add_column("per-sample shape")
    table.add_column("dtype")
    table.add_column("present")
    for m in info["modalities"]:
        shape = "x".join("T" if d is None else str(d) for d in info["input_shapes"][m])
        table.add_row(m, shape, info["input_dtypes"][m], f"{summary['presence'].get(m, 0):.0%}")
    console.print(table)
    console.print(
        f"classes ({info['num_classes']}): {', '.join(info['class_names'])}; "
        f"splits: {summary['splits']}"
    )
    return summary


def print_build_summary(root: Path, console: Console | None = None) -> dict:
    """Print what the raw build of ``root`` kept and skipped (from ``raw/build.json``)."""
    console = console or Console()
    path = Path(root) / "raw" / "build.json"
    try:
        build = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    counts = build.get("counts", {})
    samples = counts.get("samples", {})
    console.print(f"{build.get('name', root)}: samples {samples}")
    if "present" in counts:
        console.print(f"modalities present per split: {counts['present']}")
    skipped = build.get("skipped") or {}
    for reason, entry in skipped.items():
        console.print(f"skipped {entry['count']}: {reason} (e.g. {entry['examples'][0]})")
    if not skipped:
        console.print("skipped: nothing")
    if build.get("attribution"):
        console.print(f"attribution: {build['attribution']}")
    return build
