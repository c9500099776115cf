"""Robustness of frozen-encoder models on cached features: the same numbers as running the
whole model, each distinct corrupted input encoded once and shared between models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfurnace.data.loader import make_loader
from mmfurnace.errors import InputError
from mmfurnace.models import build_model
from mmfurnace.train.checkpoint import load_model
from mmfurnace.train.recipe import train
from mmfurnace.train.robustness import evaluate_robustness
from mmfurnace.train.robustness_cached import MemoEncoder, cached_robustness
from tests.train.tinydata import INFO, tiny_datasets, tiny_model_config, tiny_run_config

CORRUPTIONS = [("text", "unk"), ("audio", "missing"), ("image", "missing")]
LEVELS = [0.0, 0.5, 1.0]


def test_memo_encoder_returns_the_encoders_output_and_encodes_each_row_once() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), INFO).eval()
    encoder = model.encoders["text"]
    memo = MemoEncoder(encoder)
    x = torch.randint(4, 16, (6, 5))
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[2, 3:] = False
    x[4] = x[1]  # the same row twice in one batch
    with torch.no_grad():
        want = encoder(x, valid)
        got = memo(x, valid)
        assert memo.encoded == 5
        torch.testing.assert_close(got.sequence, want.sequence, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.pooled, want.pooled, rtol=1e-5, atol=1e-6)
        again = memo(x[[3, 0]], valid[[3, 0]])  # seen rows, another batch: nothing runs
        assert memo.encoded == 5
        torch.testing.assert_close(again.pooled, want.pooled[[3, 0]])
        other = x.clone()
        other[0, 0] = 15 if int(x[0, 0]) != 15 else 14
        memo(other, valid)
        assert memo.encoded == 6  # only the changed row


@pytest.fixture(scope="module")
def frozen_runs(tmp_path_factory):
    """Late and early fusion on all-frozen encoders (same seed: the same encoder weights)."""
    root = tmp_path_factory.mktemp("frozen")
    runs = {}
    for fusion in ("late", "early"):
        cfg = tiny_run_config(root / fusion, fusion=fusion, epochs=2,
                              feature_cache_dir=root / "features")
        for enc in cfg.model.encoders.values():
            enc.freeze = True
        train(cfg, progress=False, datasets=tiny_datasets(24, 12, 12))
        runs[fusion] = root / fusion / "best"
    return root, runs


def test_cached_robustness_matches_running_the_whole_model(frozen_runs) -> None:
    root, runs = frozen_runs
    splits = tiny_datasets(24, 12, 12)
    results = cached_robustness(runs, corruptions=CORRUPTIONS, levels=LEVELS,
                                cache_dir=root / "features", batch_size=8, datasets=splits)
    assert list(results) == ["late", "early"]
    # every text row (clean and at each level) encoded once, for both models together
    assert results["late"]["reencoded"]["text"] == results["early"]["reencoded"]["text"] > 0
    for fusion, checkpoint in runs.items():
        model, _ = load_model(checkpoint)
        loader = make_loader(splits["test"], modalities=list(model.modalities), batch_size=8,
                             shuffle=False)
        direct = evaluate_robustness(model, loader, "cpu", modalities=list(model.modalities),
                                     corruptions=CORRUPTIONS, levels=LEVELS)
        got = results[fusion]
        assert got["clean_accuracy"] == pytest.approx(direct["clean_accuracy"])
        assert got["removal"] == pytest.approx(direct["removal"])
        assert got["chance_accuracy"] == pytest.approx(direct["chance_accuracy"])
        for key, curve in direct["curves"].items():
            assert got["curves"][key]["accuracy"] == pytest.approx(curve["accuracy"]), key


def test_a_trainable_encoder_is_refused_naming_it(tmp_path: Path) -> None:
    cfg = tiny_run_config(tmp_path / "run", epochs=1, feature_cache_dir=tmp_path / "features")
    cfg.model.encoders["image"].freeze = True
    train(cfg, progress=False, datasets=tiny_datasets(12, 6, 6))
    with pytest.raises(InputError, match="audio, text trained"):
        cached_robustness({"x": tmp_path / "run" / "best"}, corruptions=CORRUPTIONS,
                          levels=LEVELS, cache_dir=tmp_path / "features",
                          datasets=tiny_datasets(12, 6, 6))
