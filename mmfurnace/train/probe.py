"""Logistic-regression probes on frozen encoders' cached features.

The plain baseline a user tries first with pretrained backbones: one linear layer on the
pooled features of a modality, or of several side by side, fitted as a multinomial logistic
regression. The features are the feature cache's (models/feature_cache.py): the same entries
the fusion models train on, pooled as the encoders pool them (masked mean over the sequence).

    pooled = cached_pooled(cfg)                       # split -> PooledSplit
    result = run_probe(pooled, ["image", "text"])     # weight decay picked on valid

Each feature is standardised with the train split's mean and std (over rows that have the
modality); a row without a modality gets zeros there, i.e. the train mean, so the probe falls
back to the other modalities (or to the class prior) as a fusion model does with its mask.
The fit is full-batch L-BFGS on a convex objective, from zeros for the strongest weight decay
and from the previous fit for each weaker one, so it is deterministic: seeds do not change a
probe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmfurnace.config import RunConfig
from mmfurnace.data.cache import PackedDataset
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models.classifier import MultimodalClassifier
from mmfurnace.models.feature_cache import cache_features
from mmfurnace.models.freeze import is_frozen
from mmfurnace.threads import torch_threads
from mmfurnace.train.metrics import classification_metrics

# L2 strengths tried (loss = mean cross-entropy + wd / 2 * |W|^2), picked on valid accuracy;
# 1e-4..1 spans under- to over-regularised for a few thousand rows of 100-1,300 features.
WEIGHT_DECAYS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PooledSplit:
    """One split's pooled features.

    features: modality -> (rows, dim) float32, zeros where the modality is absent
    present:  modality -> (rows,) bool
    labels:   (rows,) int64
    """

    features: dict[str, Tensor]
    present: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ProbeResult:
    """A fitted probe: the modalities it reads, the weight decay valid picked, valid and test
    metrics (accuracy, micro_f1, macro_f1; test empty without a test split), the valid
    accuracy of every weight decay tried, and its test logits (rows in the split's order;
    None without a test split) for per-row comparisons (mmfurnace/train/paired.py)."""

    modalities: tuple[str, ...]
    weight_decay: float
    valid: dict[str, float]
    test: dict[str, float]
    valid_by_weight_decay: dict[float, float]
    linear: nn.Linear
    mean: Tensor
    std: Tensor
    test_logits: Tensor | None = None


# ----------------------------------------------------------------------------- features


def cached_pooled(
    cfg: RunConfig, *, datasets: Mapping[str, Dataset] | None = None, build: bool = True
) -> dict[str, PooledSplit]:
    """Pooled features of every split of ``cfg.data`` (or ``datasets``) from the feature cache
    entries of ``cfg.model``'s encoders, which must all be frozen; entries missing are built
    (``build=False``: an InputError). Runs only the hashing when the recipe built them.
    An encoder with ``unfreeze_top`` is read wholly frozen: the probe is the baseline on the
    pretrained features, before the fine-tuning that the config's own runs do."""
    from mmfurnace.data.datasets import build_dataset
    from mmfurnace.data.subset import restrict_modalities

    splits = dict(datasets) if datasets is not None else {
        s: build_dataset(cfg.data, s) for s in SPLITS
    }
    splits = restrict_modalities(splits, cfg.data.modalities)
    encoders = {m: e.model_copy(update={"unfreeze_top": 0}) for m, e in cfg.model.encoders.items()}
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoders": encoders})})
    model = seeded_model(cfg, splits["train"].info)  # type: ignore[attr-defined]
    with torch_threads(cfg.train.feature_threads):
        return pooled_features(model, splits, cache_dir=cfg.train.feature_cache_dir,
                               batch_size=cfg.data.batch_size, build=build)


def seeded_model(cfg: RunConfig, info: Any) -> MultimodalClassifier:
    """``cfg``'s model seeded as the recipe seeds it, so a frozen encoder that is not
    pretrained gets the weights (and so the feature-cache entry) of the run with this config."""
    from mmfurnace.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model, info, modalities=list(info.modalities))


def pooled_features(
    model: MultimodalClassifier,
    splits: Mapping[str, Dataset],
    *,
    cache_dir: Path,
    batch_size: int = 32,
    build: bool = True,
) -> dict[str, PooledSplit]:
    """split -> PooledSplit of ``model``'s frozen encoders over ``splits``, read from their
    feature cache entries under ``cache_dir`` (built first when missing and ``build``)."""
    thawed = [m for m in model.modalities if not is_frozen(model.encoders[m])]
    if thawed:
        raise ConfigError(
            f"a probe reads frozen encoders' cached features; model.encoders.{thawed[0]} is "
            f"trainable: set model.encoders.{thawed[0]}.freeze=true"
        )
    if model.multilabel:
        raise ConfigError("the logistic-regression probe is single-label; this dataset is multi-label")
    cache = cache_features(model, splits, cache_dir=cache_dir, batch_size=batch_size, build=build)
    return {name: _pool(cache.entries, name, len(ds)) for name, ds in splits.items()}  # type: ignore[arg-type]


def _pool(entries: Mapping[str, Path], split: str, rows: int) -> PooledSplit:
    features, present, labels = {}, {}, None
    for m, entry in sorted(entries.items()):
        ds = PackedDataset(entry, split)
        if len(ds) != rows:
            raise InputError(f"feature cache {entry}: {len(ds)} {split} rows, the split has {rows}")
        dim = int(ds.info.input_shapes[m][-1])
        out, mask, y = torch.zeros(rows, dim), torch.zeros(rows, dtype=torch.bool), []
        for i in range(rows):
            sample = ds[i]
            y.append(sample.label)
            x = sample.inputs.get(m)
            if x is not None:  # (tokens, dim): the encoder's pooled vector is the mean
                out[i], mask[i] = x.float().mean(0), True
        features[m], present[m] = out, mask
        labels = torch.stack(y).long() if labels is None else labels
    assert labels is not None
    return PooledSplit(features, present, labels)


# ----------------------------------------------------------------------------- fitting


def standardizer(split: PooledSplit, modalities: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(mean, std) per column of the concatenated ``modalities``, over the rows that have each;
    std floored so a constant feature stays finite."""
    means, stds = [], []
    for m in modalities:
        rows = split.features[m][split.present[m]]
        if rows.shape[0] == 0:
            raise InputError(f"no row of the train split has the {m} modality: nothing to fit")
        means.append(rows.mean(0))
        stds.append(rows.std(0, unbiased=False).clamp(min=1e-6))
    return torch.cat(means), torch.cat(stds)


def design_matrix(split: PooledSplit, modalities: Sequence[str], mean: Tensor, std: Tensor) -> Tensor:
    """(rows, sum of dims): the standardised features side by side; an absent modality's
    columns are 0 (the train mean)."""
    x = (torch.cat([split.features[m] for m in modalities], dim=1) - mean) / std
    start = 0
    for m in modalities:
        dim = split.features[m].shape[1]
        x[~split.present[m], start:start + dim] = 0.0
        start += dim
    return x


def fit_logistic(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 200,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Multinomial logistic regression: minimises mean cross-entropy + weight_decay / 2 *
    |W|^2 (bias not penalised) by full-batch L-BFGS, from zeros or from ``init`` (a fit with
    a neighbouring weight decay, which converges in a fraction of the steps). x (rows, dim),
    y (rows,)."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"probe: {x.shape[0]} feature rows for {y.shape[0]} labels")
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(init.weight if init is not None else torch.zeros_like(linear.weight))
        linear.bias.copy_(init.bias if init is not None else torch.zeros_like(linear.bias))
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear.requires_grad_(False)


def run_probe(
    splits: Mapping[str, PooledSplit],
    modalities: Sequence[str],
    *,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    max_iter: int = 200,
    standardize: bool = True,
) -> ProbeResult:
    """Fit a probe on ``splits["train"]`` for each weight decay, keep the one with the best
    ``splits["valid"]`` accuracy (the stronger one on a tie), and score it on ``splits["test"]``
    when there is one. ``num_classes`` defaults to 1 + the largest label seen.
    ``standardize=False`` fits the raw features (to measure what standardising is worth)."""
    modalities = sorted(modalities)
    missing = [s for s in ("train", "valid") if s not in splits]
    if missing:
        raise InputError(f"probe: missing split(s) {', '.join(missing)}")
    unknown = [m for m in modalities if m not in splits["train"].features]
    if not modalities or unknown:
        raise ConfigError(f"probe modalities {list(modalities)}: the features hold "
                          f"{sorted(splits['train'].features)}")
    if not weight_decays or any(wd < 0 for wd in weight_decays):
        raise ConfigError(f"probe weight decays must be a non-empty list of values >= 0, got {list(weight_decays)}")
    train, valid = splits["train"], splits["valid"]
    classes = num_classes or 1 + int(max(int(s.labels.max()) for s in splits.values() if len(s)))
    mean, std = standardizer(train, modalities)
    if not standardize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    x_train, x_valid = (design_matrix(s, modalities, mean, std) for s in (train, valid))
    scores: dict[float, float] = {}
    best: tuple[float, float, nn.Linear] | None = None
    previous = None
    for wd in sorted(weight_decays, reverse=True):  # strongest first: it wins ties
        previous = linear = fit_logistic(x_train, train.labels, num_classes=classes,
                                         weight_decay=wd, max_iter=max_iter, init=previous)
        with torch.no_grad():
            scores[wd] = classification_metrics(linear(x_valid), valid.labels, multilabel=False)["accuracy"]
        if best is None or scores[wd] > best[0]:
            best = (scores[wd], wd, linear)
    assert best is not None
    _, wd, linear = best
    with torch.no_grad():
        valid_metrics = classification_metrics(linear(x_valid), valid.labels, multilabel=False)
        test_metrics, test_logits = {}, None
        if "test" in splits:
            test_logits = linear(design_matrix(splits["test"], modalities, mean, std))
            test_metrics = classification_metrics(test_logits, splits["test"].labels, multilabel=False)
    return ProbeResult(tuple(modalities), wd, valid_metrics, test_metrics,
                       dict(sorted(scores.items())), linear, mean, std, test_logits)
