"""Fit ``model.feature_norm: standardize``: each modality's encoder output minus the train
split's mean, over its std, per feature (models/layers.py ``Standardize``).

The statistics are those the logistic-regression probe standardises with (train/probe.py
``standardizer``: pooled vectors of the rows that have the modality, population std floored),
computed once before the first step from the encoders as they start: for frozen encoders that
is their cached features, so the scaling is exact for the whole run; a trainable encoder's
outputs drift from it as it learns, so there it acts as a data-dependent initialisation. The
statistics are buffers: the checkpoint carries them, and a resumed run keeps the saved ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmfurnace.models.classifier import MultimodalClassifier
from mmfurnace.models.layers import Standardize
from mmfurnace.train.probe import PooledSplit, standardizer

if TYPE_CHECKING:
    from mmfurnace.config import RunConfig


def fit_standardizers(
    model: MultimodalClassifier, train: Dataset, cfg: RunConfig, modalities: list[str],
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Set every ``Standardize`` of ``model.feature_norms`` from ``train``; returns per modality
    the mean |x| and the smallest / largest std before scaling (for the run log). Nothing to
    do (an empty dict) when the model does not standardise."""
    from mmfurnace.train.run_setup import run_loader

    norms = model.feature_norms
    if norms is None or not any(isinstance(n, Standardize) for n in norms.values()):
        return {}
    pooled = _pooled(model, run_loader(cfg, train, modalities, pin=False), modalities, device)
    stats: dict[str, dict[str, float]] = {}
    for m in modalities:
        mean, std = standardizer(pooled, [m])
        norms[m].set_statistics(mean.to(device), std.to(device))
        rows = pooled.features[m][pooled.present[m]]
        stats[m] = {"mean_abs": float(rows.abs().mean()), "std_min": float(std.min()),
                    "std_max": float(std.max())}
    return stats


def _pooled(model: MultimodalClassifier, loader: Any, modalities: list[str],
            device: torch.device) -> PooledSplit:
    """The raw (unscaled) pooled encoder outputs of every row the loader yields."""
    features: dict[str, list[Tensor]] = {m: [] for m in modalities}
    present: dict[str, list[Tensor]] = {m: [] for m in modalities}
    labels: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(device)
                for m in modalities:
                    if m in batch.inputs:
                        pooled = model.encoders[m](batch.inputs[m], batch.valid.get(m)).pooled
                        rows = batch.present[m].to(torch.bool)
                    else:  # no row of this batch has it
                        pooled = torch.zeros(len(batch), int(model.encoders[m].out_dim))
                        rows = torch.zeros(len(batch), dtype=torch.bool)
                    features[m].append(pooled.float().cpu())
                    present[m].append(rows.cpu())
                labels.append(batch.labels.cpu())
    finally:
        model.train(was_training)
    return PooledSplit({m: torch.cat(v) for m, v in features.items()},
                       {m: torch.cat(v) for m, v in present.items()}, torch.cat(labels))
