"""The logistic-regression probe: the same fit as scikit-learn's, weight decay picked on valid,
absent modalities, and the pooled features read from the frozen-feature cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfurnace.data.loader import make_loader
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models import build_model
from mmfurnace.train.probe import (
    PooledSplit,
    cached_pooled,
    design_matrix,
    fit_logistic,
    pooled_features,
    run_probe,
    standardizer,
)
from mmfurnace.train.recipe import train
from tests.train.tinydata import INFO, tiny_datasets, tiny_model_config, tiny_run_config

sklearn = pytest.importorskip("sklearn")


def digits_splits() -> dict[str, PooledSplit]:
    """scikit-learn's 1,797 real 8x8 handwritten digits as one 'image' modality (64 features),
    split 1,000 / 397 / 400."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    parts = {"train": slice(0, 1000), "valid": slice(1000, 1397), "test": slice(1397, None)}
    return {
        name: PooledSplit({"image": x[s]}, {"image": torch.ones(len(y[s]), dtype=torch.bool)}, y[s])
        for name, s in parts.items()
    }


def test_fit_matches_scikit_learn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    splits = digits_splits()
    train = splits["train"]
    mean, std = standardizer(train, ["image"])
    x = design_matrix(train, ["image"], mean, std)
    wd = 1e-2
    ours = fit_logistic(x, train.labels, num_classes=10, weight_decay=wd)
    # scikit-learn minimises C * sum(CE) + |W|^2 / 2, i.e. ours scaled by n with C = 1 / (wd n)
    ref = LogisticRegression(C=1.0 / (wd * len(train)), max_iter=5000, tol=1e-8).fit(x.numpy(), train.labels.numpy())
    x_test = design_matrix(splits["test"], ["image"], mean, std)
    ours_p = torch.softmax(ours(x_test), -1)
    ref_p = torch.tensor(ref.predict_proba(x_test.numpy()), dtype=torch.float32)
    torch.testing.assert_close(ours_p, ref_p, atol=2e-3, rtol=0)
    assert (ours_p.argmax(-1) == ref_p.argmax(-1)).float().mean() > 0.99


def test_run_probe_picks_weight_decay_on_valid_and_scores_test() -> None:
    splits = digits_splits()
    result = run_probe(splits, ["image"], weight_decays=(1e-3, 1e-2, 30.0))
    assert set(result.valid_by_weight_decay) == {1e-3, 1e-2, 30.0}
    # a weight decay of 30 shrinks the weights to almost nothing: valid must reject it
    assert result.valid_by_weight_decay[30.0] < max(result.valid_by_weight_decay.values())
    assert result.weight_decay != 30.0
    assert result.valid["accuracy"] == max(result.valid_by_weight_decay.values())
    assert result.test["accuracy"] > 0.85  # the last 400 digits (other writers): 90% here
    assert set(result.test) == {"accuracy", "micro_f1", "macro_f1"}
    again = run_probe(splits, ["image"], weight_decays=(1e-3, 1e-2, 30.0))
    assert again.test == result.test  # deterministic: no seed to vary
    raw = run_probe(splits, ["image"], weight_decays=(1e-2,), standardize=False)
    assert torch.all(raw.mean == 0)
    assert torch.all(raw.std == 1)


def test_absent_modality_gets_the_train_mean_and_concat_uses_the_other() -> None:
    splits = digits_splits()
    g = torch.Generator().manual_seed(0)
    two = {}
    for name, s in splits.items():
        rows = len(s)
        noise = torch.randn(rows, 5, generator=g)  # a useless second modality
        present = torch.ones(rows, dtype=torch.bool)
        present[::4] = False
        noise[~present] = 0.0
        two[name] = PooledSplit({"audio": noise, "image": s.features["image"]},
                                {"audio": present, "image": s.present["image"]}, s.labels)
    mean, std = standardizer(two["train"], ["audio", "image"])
    x = design_matrix(two["train"], ["audio", "image"], mean, std)
    assert x.shape == (1000, 69)
    assert torch.all(x[::4, :5] == 0)  # absent rows: zeros, i.e. the train mean
    torch.testing.assert_close(mean[:5], two["train"].features["audio"][two["train"].present["audio"]].mean(0))
    audio = run_probe(two, ["audio"], weight_decays=(1e-2,))
    concat = run_probe(two, ["image", "audio"], weight_decays=(1e-2,))
    assert concat.modalities == ("audio", "image")
    assert audio.test["accuracy"] < 0.3  # noise alone: near chance
    assert concat.test["accuracy"] > 0.85


def test_bad_requests_name_the_problem() -> None:
    splits = digits_splits()
    with pytest.raises(ConfigError, match="text"):
        run_probe(splits, ["text"])
    with pytest.raises(InputError, match="valid"):
        run_probe({"train": splits["train"]}, ["image"])
    with pytest.raises(ConfigError, match="weight decays"):
        run_probe(splits, ["image"], weight_decays=())


def frozen_tiny(*frozen: str):
    cfg = tiny_model_config("late")
    for m in frozen:
        cfg.encoders[m].freeze = True
    torch.manual_seed(0)
    return cfg, build_model(cfg, INFO)


def test_pooled_features_are_the_frozen_encoders_pooled_outputs(tmp_path: Path) -> None:
    _, model = frozen_tiny("audio", "image", "text")
    splits = tiny_datasets(24, 12, 12)  # some rows miss a modality
    pooled = pooled_features(model, splits, cache_dir=tmp_path, batch_size=5)
    assert set(pooled) == {"train", "valid", "test"}
    model.eval()
    loader = make_loader(splits["valid"], modalities=list(INFO.modalities), batch_size=12, shuffle=False)
    batch = next(iter(loader))
    with torch.no_grad():
        for m in INFO.modalities:
            out = model.encoders[m](batch.inputs[m], batch.valid.get(m))
            present = batch.present[m]
            torch.testing.assert_close(pooled["valid"].present[m], present)
            torch.testing.assert_close(pooled["valid"].features[m][present], out.pooled[present],
                                       rtol=1e-5, atol=1e-5)
            assert torch.all(pooled["valid"].features[m][~present] == 0)
    torch.testing.assert_close(pooled["valid"].labels, batch.labels)
    result = run_probe(pooled, ["audio", "image", "text"], num_classes=3, weight_decays=(1e-2, 1e-1))
    assert result.test["accuracy"] > 1 / 3  # the tiny data carries its class in every modality


def test_cached_pooled_reuses_the_recipe_cache_and_rejects_trainable_encoders(tmp_path: Path) -> None:
    cfg = tiny_run_config(tmp_path / "run", fusion="late", feature_cache_dir=tmp_path / "cache")
    for m in ("audio", "image", "text"):
        cfg.model.encoders[m].freeze = True
    splits = tiny_datasets(24, 12, 12)
    train(cfg, progress=False, datasets=splits)  # builds the entries
    pooled = cached_pooled(cfg, datasets=splits, build=False)  # finds the run's entries
    assert [len(pooled[s]) for s in ("train", "valid", "test")] == [24, 12, 12]
    fresh = cached_pooled(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"feature_cache_dir": tmp_path / "other"})}), datasets=splits)  # builds anew
    torch.testing.assert_close(fresh["test"].features["image"], pooled["test"].features["image"])
    # a config that fine-tunes the top blocks is probed on the wholly frozen encoder's features
    tuned = cfg.model_copy(deep=True)
    tuned.model.encoders["text"].unfreeze_top = 1
    torch.testing.assert_close(cached_pooled(tuned, datasets=splits, build=False)["test"].features,
                               pooled["test"].features)
    assert tuned.model.encoders["text"].unfreeze_top == 1  # the caller's config is left alone
    cfg.model.encoders["text"].freeze = False
    with pytest.raises(ConfigError, match=r"model\.encoders\.text"):
        cached_pooled(cfg, datasets=splits)
