"""Robustness of models on frozen pretrained encoders, without re-running the backbones
more than the corruptions need.

Every evaluation pass of :func:`~mmfurnace.train.robustness.evaluate_robustness` (clean, each
modality removed, alone, shuffled, every corruption level) runs the whole model on the split:
with EfficientNet-Lite0 at ~190 ms an image on this CPU that is ~30 s per pass on tuxpaint's
141 test rows, and minutes per model. Here:

- a modality that is not corrupted (or only made missing) reads its encoder's outputs from
  the feature cache the training built (``models/feature_cache.py``);
- a corrupted modality runs its real encoder, wrapped in a :class:`MemoEncoder` that encodes
  each distinct input row once. The corruptions are seeded per level, so every model sees
  the same corrupted rows, and models whose frozen encoder has the same weights share one
  memo: the corrupted features are computed once for all of them.

The results are :func:`evaluate_robustness`'s, model by model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmfurnace.data.manifest import SPLITS
from mmfurnace.errors import InputError
from mmfurnace.models.feature_cache import FeatureCache, cache_features, encoder_fingerprint
from mmfurnace.models.outputs import EncoderOutput


class MemoEncoder(nn.Module):
    """``encoder``, run once per distinct input row: a row seen before (same tensor, same valid
    mask, same padded length) gets its stored output. For frozen encoders in eval mode only,
    whose output row depends on that input row alone."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_dim = encoder.out_dim
        self.memo: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
        self.encoded = 0  # rows the encoder ran on

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        keys = [_row_key(x[i], None if valid is None else valid[i]) for i in range(len(x))]
        todo = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in self.memo}.values())
        if todo:
            index = torch.tensor(todo)
            out = self.encoder(x[index], None if valid is None else valid[index])
            for j, i in enumerate(todo):
                self.memo[keys[i]] = (out.sequence[j], out.pooled[j],
                                      None if out.valid is None else out.valid[j])
            self.encoded += len(todo)
        rows = [self.memo[k] for k in keys]
        masks = [r[2] for r in rows]
        return EncoderOutput(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]),
                             None if masks[0] is None else torch.stack(masks))  # type: ignore[arg-type]


def _row_key(x: Tensor, valid: Tensor | None) -> str:
    h = hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}".encode())
    h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    if valid is not None:
        h.update(valid.detach().cpu().to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_robustness(
    checkpoints: Mapping[str, Path],
    *,
    corruptions: Sequence[tuple[str, str]],
    levels: Sequence[float],
    cache_dir: Path,
    split: str = "test",
    seed: int = 0,
    batch_size: int | None = None,
    datasets: Mapping[str, Dataset] | None = None,
) -> dict[str, dict[str, Any]]:
    """name -> :func:`evaluate_robustness` result of each checkpoint on ``split``, its frozen
    encoders served from the feature cache under ``cache_dir`` (entries are built when
    missing) except for the modalities that ``corruptions`` corrupt ("missing" needs no
    encoder), which run their real encoder once per distinct input across all checkpoints.
    Every encoder of every checkpoint must be frozen. ``datasets``: the splits (train, valid,
    test, as the training had them: they key the cache) instead of the checkpoints' data."""
    from mmfurnace.data.datasets import build_dataset
    from mmfurnace.data.loader import make_loader
    from mmfurnace.data.subset import restrict_modalities
    from mmfurnace.models.freeze import is_frozen
    from mmfurnace.train.checkpoint import load_model
    from mmfurnace.train.robustness import evaluate_robustness

    reencoded = sorted({m for m, c in corruptions if c != "missing"})
    memos: dict[tuple[str, str], MemoEncoder] = {}
    cache: FeatureCache | None = None
    fingerprints: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, checkpoint in checkpoints.items():
        model, meta = load_model(checkpoint)
        modalities = list(model.modalities)
        thawed = [m for m in modalities if not is_frozen(model.encoders[m])]
        if thawed:
            raise InputError(f"{checkpoint}: cached robustness needs frozen encoders; "
                             f"{', '.join(thawed)} trained (use evaluate_checkpoint)")
        prints = {m: encoder_fingerprint(model.encoders[m]) for m in modalities}
        if cache is None or any(fingerprints.get(m) != p for m, p in prints.items()):
            splits = restrict_modalities(
                dict(datasets) if datasets is not None
                else {s: build_dataset(meta.config.data, s) for s in SPLITS}, modalities)
            cache = cache_features(model, splits, cache_dir=cache_dir,
                                   batch_size=meta.config.data.batch_size)
            test = splits[split]
            fingerprints = prints
        served = FeatureCache({m: e for m, e in cache.entries.items() if m not in reencoded})
        net = served.view(model).with_encoders({
            m: memos.setdefault((m, prints[m]), MemoEncoder(model.encoders[m]))
            for m in reencoded if m in modalities
        })
        loader = make_loader(served.datasets({split: test})[split], modalities=modalities,
                             batch_size=batch_size or meta.config.data.batch_size, shuffle=False,
                             num_workers=0, seed=seed)
        chosen = [(m, c) for m, c in corruptions if m in modalities]
        results[name] = evaluate_robustness(net, loader, "cpu", modalities=modalities,
                                            corruptions=chosen, levels=levels, seed=seed)
        results[name]["reencoded"] = {m: memos[(m, prints[m])].encoded
                                      for m in reencoded if m in modalities}
    return results
