"""Evaluate a saved checkpoint on a split, optionally with per-modality corruption curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmfurnace.data.datasets import build_dataset
from mmfurnace.data.info import check_same_data
from mmfurnace.data.loader import make_loader
from mmfurnace.threads import torch_threads
from mmfurnace.train.checkpoint import load_model
from mmfurnace.train.distributed import read_env, resolve_device
from mmfurnace.train.evaluate import evaluate
from mmfurnace.typed_config import apply_overrides, parse


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    split: str = "test",
    noise: str | None = None,
    levels: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    out_dir: Path | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split`` of the data it was trained on.

    ``overrides`` (``data.root=...``) change the data section, e.g. to point at a moved
    dataset. With ``noise`` (a spec for :func:`~mmfurnace.train.robustness.parse_noise_spec`,
    or ``"all"``), also returns robustness curves and writes their report into ``out_dir``
    (default: ``<checkpoint>/robustness``). ``threads``: torch intra-op threads while it runs
    (one is fastest for these small models on a shared CPU; None keeps torch's setting).
    """
    with torch_threads(threads):
        return _evaluate(checkpoint, split=split, noise=noise, levels=levels, out_dir=out_dir,
                         overrides=overrides, seed=seed)


def _evaluate(
    checkpoint: Path,
    *,
    split: str,
    noise: str | None,
    levels: Sequence[float],
    out_dir: Path | None,
    overrides: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    from mmfurnace.config import RunConfig

    device = resolve_device("auto", read_env())
    model, meta = load_model(checkpoint, device=device)
    cfg = parse(RunConfig, apply_overrides(meta.config.model_dump(mode="json"), list(overrides)),
                source="overrides")
    modalities = list(model.modalities)
    dataset = build_dataset(cfg.data, split)
    check_same_data(meta.info, dataset.info, where=f"the {split} split at {cfg.data.root}")
    loader = make_loader(dataset, modalities=modalities,
                         batch_size=cfg.data.batch_size, shuffle=False,
                         num_workers=cfg.data.num_workers, seed=seed)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "split": split,
                              "metrics": evaluate(model, loader, device, modalities=modalities)}
    if noise:
        from mmfurnace.train.robustness import (
            evaluate_robustness,
            parse_noise_spec,
            write_robustness_report,
        )

        corruptions = None if noise == "all" else parse_noise_spec(noise)
        robust = evaluate_robustness(model, loader, device, modalities=modalities,
                                     corruptions=corruptions, levels=levels, seed=seed)
        target = Path(out_dir) if out_dir else Path(checkpoint) / "robustness"
        files = write_robustness_report({cfg.model.fusion: robust}, target)
        result["robustness"] = robust
        result["report"] = {k: str(v) for k, v in files.items()}
    return result
