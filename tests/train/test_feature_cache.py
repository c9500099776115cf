"""The frozen-feature cache: same logits as running the frozen encoders, reuse across runs,
invalidation when weights or preprocessing change, and the recipe training on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.loader import make_loader
from mmfurnace.errors import ConfigError
from mmfurnace.models import build_model
from mmfurnace.models.feature_cache import cache_features
from mmfurnace.train.checkpoint import load_weights
from mmfurnace.train.recipe import train
from tests.train.tinydata import INFO, tiny_datasets, tiny_model_config, tiny_run_config

MODALITIES = list(INFO.modalities)


def frozen_config(*modalities: str):
    cfg = tiny_model_config("cross_attention")
    for m in modalities:
        cfg.encoders[m].freeze = True
    return cfg


def frozen_model(*modalities: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(frozen_config(*modalities), INFO)


def logits(model, dataset: Dataset) -> torch.Tensor:
    loader = make_loader(dataset, modalities=MODALITIES, batch_size=8, shuffle=False)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.inputs, b.present, b.valid).logits for b in loader])


class Scaled(Dataset):
    """A dataset whose ``modality`` input is multiplied by ``factor`` (another normalisation)."""

    def __init__(self, base: Dataset, modality: str, factor: float) -> None:
        self.base, self.modality, self.factor, self.info = base, modality, factor, base.info

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Sample:
        s = self.base[i]
        inputs = {m: (x * self.factor if m == self.modality else x) for m, x in s.inputs.items()}
        return Sample(inputs=inputs, label=s.label)


@pytest.mark.parametrize("frozen", [("audio", "image", "text"), ("image",)])
def test_cached_features_give_the_logits_of_the_frozen_encoders(tmp_path: Path, frozen) -> None:
    model = frozen_model(*frozen)
    splits = tiny_datasets(24, 12, 12)  # with absent modalities in some rows
    cache = cache_features(model, splits, cache_dir=tmp_path, batch_size=5)
    assert sorted(cache.entries) == sorted(frozen)
    cached_splits, view = cache.datasets(splits), cache.view(model)
    assert type(view.encoders[frozen[0]]).__name__ == "PrecomputedEncoder"
    assert view.fusion is model.fusion
    assert view.head is model.head
    for split in splits:
        sample = cached_splits[split][0]
        assert sample.inputs["image"].shape[-1] == model.encoders["image"].out_dim
        torch.testing.assert_close(
            logits(view, cached_splits[split]), logits(model, splits[split]), rtol=1e-5, atol=1e-5
        )


def test_cache_is_reused_and_invalidated_by_weights_and_preprocessing(tmp_path: Path) -> None:
    splits = tiny_datasets(16, 8, 8)
    model = frozen_model("image")
    first = cache_features(model, splits, cache_dir=tmp_path).stats["image"]
    again = cache_features(frozen_model("image"), splits, cache_dir=tmp_path).stats["image"]
    assert not first["hit"]
    assert again["hit"]
    assert again["entry"] == first["entry"]
    assert again["build_s"] == 0.0

    other_weights = cache_features(frozen_model("image", seed=1), splits, cache_dir=tmp_path)
    assert not other_weights.stats["image"]["hit"]
    assert other_weights.entries["image"] != Path(first["entry"])

    renormalised = {s: Scaled(d, "image", 2.0) for s, d in splits.items()}
    other_inputs = cache_features(model, renormalised, cache_dir=tmp_path)
    assert not other_inputs.stats["image"]["hit"]
    assert other_inputs.entries["image"] not in (Path(first["entry"]), other_weights.entries["image"])
    # ... and the stale entry is not what the new data reads: its features differ.
    new = other_inputs.datasets(renormalised)["train"][0].inputs["image"]
    old = cache_features(model, splits, cache_dir=tmp_path).datasets(splits)["train"][0].inputs["image"]
    assert not torch.allclose(new, old)

    # An interrupted build leaves no entry that looks complete: it is built again.
    (Path(first["entry"]) / "info.json").unlink()
    assert not cache_features(model, splits, cache_dir=tmp_path).stats["image"]["hit"]


class Repeated(Dataset):
    """Every sample of ``base`` ``times`` times, interleaved (inputs repeat across batches)."""

    def __init__(self, base: Dataset, times: int) -> None:
        self.base, self.times, self.info = base, times, base.info

    def __len__(self) -> int:
        return len(self.base) * self.times

    def __getitem__(self, i: int) -> Sample:
        return self.base[i % len(self.base)]


def test_each_distinct_input_is_encoded_once(tmp_path: Path) -> None:
    base = tiny_datasets(10, 5, 5)
    splits = {s: Repeated(d, 3) for s, d in base.items()}
    model = frozen_model("image", "text")
    calls = {"image": 0}
    encoder, forward = model.encoders["image"], model.encoders["image"].forward

    def counted(x, valid=None):
        calls["image"] += x.shape[0]
        return forward(x, valid)

    encoder.forward = counted
    cache = cache_features(model, splits, cache_dir=tmp_path, batch_size=4)
    distinct = sum(s.inputs.get("image") is not None for d in base.values() for s in d.samples)
    assert cache.stats["image"]["encoded"] == calls["image"] == distinct
    assert cache.stats["image"]["samples"] == 3 * sum(len(d) for d in base.values())
    del encoder.forward
    torch.testing.assert_close(logits(cache.view(model), cache.datasets(splits)["train"]),
                               logits(model, splits["train"]), rtol=1e-5, atol=1e-5)


def test_unfrozen_and_partly_frozen_encoders_are_not_cached(tmp_path: Path) -> None:
    model = frozen_model()  # nothing frozen
    cache = cache_features(model, tiny_datasets(8, 4, 4), cache_dir=tmp_path)
    assert cache.entries == {}
    assert cache.view(model) is model
    assert not list(tmp_path.iterdir())


def test_an_encoder_whose_pooled_is_not_the_mean_is_refused(tmp_path: Path) -> None:
    model = frozen_model("image")
    encoder = model.encoders["image"]
    original = encoder.forward

    def max_pooled(x, valid=None):
        out = original(x, valid)
        return out._replace(pooled=out.sequence.amax(1))

    encoder.forward = max_pooled
    with pytest.raises(ConfigError, match="pooled output is not the masked mean"):
        cache_features(model, tiny_datasets(8, 4, 4), cache_dir=tmp_path)


def test_training_on_the_cache_matches_training_through_the_encoders(tmp_path: Path) -> None:
    results = {}
    for name, use_cache in (("cached", True), ("direct", False)):
        cfg = tiny_run_config(tmp_path / name, epochs=2, feature_cache=use_cache,
                              feature_cache_dir=tmp_path / "features")
        cfg.model = frozen_config("audio", "image", "text")
        cfg.model.encoders["audio"].freeze = False  # one trainable encoder beside two cached
        results[name] = train(cfg, progress=False, datasets=tiny_datasets(24, 12, 12))
    cached, direct = results["cached"], results["direct"]
    for (name, a), b in zip(cached.model.state_dict().items(), direct.model.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert cached.test_metrics["accuracy"] == pytest.approx(direct.test_metrics["accuracy"])
    start = json.loads((tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()[0])
    assert sorted(start["feature_cache"]) == ["image", "text"]
    # The saved checkpoint is the whole model (the real encoders), usable without the cache.
    reloaded = build_model(frozen_config("image", "text"), INFO)
    load_weights(reloaded, tmp_path / "cached" / "last")
    for key, value in cached.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)

    # A second run on the same data and frozen weights reuses the entries.
    cfg = tiny_run_config(tmp_path / "again", epochs=1, feature_cache_dir=tmp_path / "features")
    cfg.model = frozen_config("image", "text")
    train(cfg, progress=False, datasets=tiny_datasets(24, 12, 12))
    start = json.loads((tmp_path / "again" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(s["hit"] for s in start["feature_cache"].values())


def test_feature_norm_sits_after_the_cache(tmp_path: Path) -> None:
    cfg = frozen_config("audio", "image", "text")
    cfg.feature_norm = True  # a LayerNorm per modality between the encoders and the fusion
    torch.manual_seed(0)
    model = build_model(cfg, INFO)
    splits = tiny_datasets(16, 8, 8)
    cache = cache_features(model, splits, cache_dir=tmp_path)
    assert sorted(cache.entries) == MODALITIES  # the norms are not encoders: still cached
    view = cache.view(model)
    assert view.feature_norms is model.feature_norms
    cached = cache.datasets(splits)
    torch.testing.assert_close(logits(view, cached["test"]), logits(model, splits["test"]),
                               rtol=1e-5, atol=1e-5)
