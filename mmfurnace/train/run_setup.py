"""What a training run is built from, wired from its config: the checked splits, the model
(warm-started, with its frozen encoders' feature cache), the loaders, and the optimiser, its
schedule and the precision's scaler. The recipe (:mod:`mmfurnace.train.recipe`) runs the loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from mmfurnace.data.datasets import build_dataset
from mmfurnace.data.loader import make_loader
from mmfurnace.data.subset import restrict_modalities
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models import build_model
from mmfurnace.models.feature_cache import FeatureCache, cache_features, feature_progress
from mmfurnace.threads import torch_threads
from mmfurnace.train.checkpoint import load_encoder_weights
from mmfurnace.train.distributed import DistEnv, barrier
from mmfurnace.train.precision import make_scaler
from mmfurnace.train.schedule import build_optimizer, warmup_cosine, warmup_steps_for

if TYPE_CHECKING:
    from mmfurnace.config import RunConfig
    from mmfurnace.train.config import TrainConfig

SPLITS = ("train", "valid", "test")


class Optimisation(NamedTuple):
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any  # a GradScaler (a disabled one unless fp16)


def setup_data(cfg: RunConfig, datasets: dict[str, Dataset] | None) -> tuple[dict[str, Dataset], Any]:
    """The splits (given or built from ``cfg.data``), checked and restricted to
    ``cfg.data.modalities``, and the train split's DatasetInfo."""
    splits = datasets if datasets is not None else {s: build_dataset(cfg.data, s) for s in SPLITS}
    _check_splits(splits)
    splits = restrict_modalities(splits, cfg.data.modalities)
    info = splits["train"].info
    _check_modality_dropout(cfg.train.modality_dropout, list(info.modalities))
    return splits, info


def setup_model(
    cfg: RunConfig, info: Any, modalities: list[str], splits: dict[str, Dataset], env: DistEnv,
    device: torch.device, *, progress: bool,
) -> tuple[nn.Module, FeatureCache]:
    """The model on ``device`` (encoders warm-started as ``train.init_encoders`` says) and the
    feature cache of its wholly frozen encoders, whose outputs are then computed once."""
    model = build_model(cfg.model, info, modalities=modalities).to(device)
    _init_encoders(model, cfg.train.init_encoders, modalities)
    model.set_grad_checkpointing(cfg.train.grad_checkpointing)  # encoders (and attention fusion)
    return model, _feature_cache(cfg, model, splits, env, device, progress=progress)


def setup_optimisation(model: nn.Module, tc: TrainConfig, steps_per_epoch: int, device: torch.device) -> Optimisation:
    """AdamW, its warmup + cosine schedule over the whole run, and the precision's scaler."""
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay,
                                encoder_lr=tc.encoder_lr)
    scheduler = warmup_cosine(
        optimizer,
        warmup_steps=warmup_steps_for(tc.warmup_epochs, steps_per_epoch=steps_per_epoch,
                                      epochs=tc.epochs),
        total_steps=tc.epochs * steps_per_epoch,
    )
    return Optimisation(optimizer, scheduler, make_scaler(tc.precision, device))


def _init_encoders(model: nn.Module, sources: dict[str, Path], modalities: list[str]) -> None:
    """Warm-start encoders from other runs' checkpoints (before a resume overwrites them)."""
    unused = sorted(set(sources) - set(modalities))
    if unused:
        raise ConfigError(
            f"train.init_encoders names {unused}, which this run does not use ({modalities})"
        )
    for modality, directory in sources.items():
        try:
            load_encoder_weights(model, modality, directory)
        except InputError as err:
            raise ConfigError(f"train.init_encoders.{modality}: {err}") from None


def _feature_cache(
    cfg: RunConfig, model: nn.Module, splits: dict[str, Dataset], env: DistEnv,
    device: torch.device, *, progress: bool,
) -> FeatureCache:
    """The cache entries of the wholly frozen encoders (models/feature_cache.py): rank 0 finds
    or builds them, the other ranks then read them."""
    if not cfg.train.feature_cache:
        return FeatureCache()
    kwargs: dict[str, Any] = dict(cache_dir=cfg.train.feature_cache_dir, device=device,
                                  batch_size=cfg.data.batch_size)
    cache = None
    if env.is_main:
        # A backbone's forward is large enough to use every core, unlike the small training
        # steps that train.threads is tuned for.
        threads = cfg.train.feature_threads or os.cpu_count()
        with torch_threads(threads), feature_progress(progress) as report:
            cache = cache_features(model, splits, progress=report, **kwargs)
    barrier(env)
    return cache if cache is not None else cache_features(model, splits, build=False, **kwargs)


def run_loader(cfg: RunConfig, dataset: Dataset, modalities: list[str], pin: bool, **kwargs: Any):
    return make_loader(
        dataset,
        modalities=modalities,
        batch_size=cfg.data.batch_size,
        shuffle=False,  # training order comes from the sampler; evaluation keeps file order
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=pin,
        seed=cfg.train.seed,
        **kwargs,
    )


def _check_splits(splits: dict[str, Dataset]) -> None:
    missing = [s for s in ("train", "valid") if s not in splits]
    if missing:
        raise InputError(f"datasets: missing split(s) {', '.join(missing)}")
    for name, dataset in splits.items():
        if len(dataset) == 0:
            raise InputError(f"the {name} split is empty")
        if not hasattr(dataset, "info"):
            raise InputError(f"the {name} dataset has no .info (DatasetInfo)")


def _check_modality_dropout(probs: dict[str, float], modalities: list[str]) -> None:
    unknown = sorted(set(probs) - set(modalities))
    if unknown:
        raise ConfigError(
            f"train.modality_dropout: {', '.join(unknown)} not among the dataset's modalities "
            f"({', '.join(modalities)})"
        )
