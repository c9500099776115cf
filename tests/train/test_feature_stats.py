"""model.feature_norm: standardize — train-split statistics fitted once, saved with the model,
used by evaluation and export; configs and checkpoints from before it still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmfurnace.data.loader import make_loader
from mmfurnace.errors import InputError
from mmfurnace.models import ModelConfig, build_model
from mmfurnace.models.layers import Standardize
from mmfurnace.train.checkpoint import load_weights
from mmfurnace.train.recipe import train
from tests.train.tinydata import INFO, tiny_datasets, tiny_run_config

MODALITIES = list(INFO.modalities)


def standardized_run(tmp_path: Path, *, frozen: bool = True):
    cfg = tiny_run_config(tmp_path / "run", fusion="late", epochs=1)
    cfg.model.feature_norm = "standardize"
    for m in MODALITIES:
        cfg.model.encoders[m].freeze = frozen
    cfg.train.feature_cache_dir = tmp_path / "cache"
    splits = tiny_datasets(24, 12, 12)
    return cfg, splits, train(cfg, progress=False, datasets=splits)


def raw_pooled(model, dataset, modality: str) -> torch.Tensor:
    """The encoder's unscaled pooled output on the rows that have ``modality``."""
    loader = make_loader(dataset, modalities=MODALITIES, batch_size=8, shuffle=False)
    rows = []
    model.eval()
    with torch.no_grad():
        for b in loader:
            if modality in b.inputs:
                out = model.encoders[modality](b.inputs[modality], b.valid.get(modality))
                rows.append(out.pooled[b.present[modality].bool()])
    return torch.cat(rows)


def test_statistics_are_the_train_splits_and_travel_with_the_checkpoint(tmp_path: Path) -> None:
    cfg, splits, result = standardized_run(tmp_path)
    model = result.model
    for m in MODALITIES:
        norm = model.feature_norms[m]
        assert isinstance(norm, Standardize)
        x = raw_pooled(model, splits["train"], m)
        torch.testing.assert_close(norm.mean, x.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(norm.std, x.std(0, unbiased=False).clamp(min=1e-6),
                                   rtol=1e-4, atol=1e-5)
        scaled = norm(x)  # what the fusion sees: every feature centred, unit spread
        torch.testing.assert_close(scaled.mean(0), torch.zeros(x.shape[1]), rtol=0, atol=1e-4)
    fresh = build_model(cfg.model, INFO)
    load_weights(fresh, result.out_dir / "best")
    for m in MODALITIES:
        torch.testing.assert_close(fresh.feature_norms[m].std, model.feature_norms[m].std)


def test_trainable_encoders_are_standardized_as_they_start(tmp_path: Path) -> None:
    _, _, result = standardized_run(tmp_path, frozen=False)
    stds = [result.model.feature_norms[m].std for m in MODALITIES]
    assert all(bool((s != 1.0).any()) for s in stds)  # fitted, not left at identity


def test_standardized_model_exports_with_parity(tmp_path: Path) -> None:
    from mmfurnace.export import check_parity, export_checkpoint, parity_exit_code

    _, _, result = standardized_run(tmp_path)
    out = export_checkpoint(result.out_dir / "best", tmp_path / "exp", formats="onnx", split=False)
    assert parity_exit_code(check_parity(out, runtimes=["eager", "onnxruntime"])) == 0


def test_the_old_switch_still_parses() -> None:
    assert ModelConfig(feature_norm=True).feature_norm == "layernorm"
    assert ModelConfig(feature_norm=False).feature_norm == "none"
    with pytest.raises(ValueError, match="standardize"):
        ModelConfig(feature_norm="zscore")


def test_bad_statistics_are_input_errors() -> None:
    norm = Standardize(4)
    with pytest.raises(InputError, match="4-d"):
        norm.set_statistics(torch.zeros(3), torch.ones(3))
    with pytest.raises(InputError, match="std > 0"):
        norm.set_statistics(torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    norm.set_statistics(torch.ones(4), torch.full((4,), 2.0))
    np.testing.assert_allclose(norm(torch.full((1, 4), 5.0)).numpy(), 2.0)
