"""Warm-starting encoders from other runs' checkpoints (train.init_encoders)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models import build_model
from mmfurnace.train.ablation import ConfigVariant, _variant_config, run_ablation
from mmfurnace.train.checkpoint import load_encoder_weights, load_model
from mmfurnace.train.recipe import train
from tests.train.tinydata import INFO, tiny_datasets, tiny_run_config


@pytest.fixture(scope="module")
def unimodal_image(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unimodal") / "run"
    cfg = tiny_run_config(out, fusion="late", epochs=1)
    cfg.data.modalities = ["image"]
    train(cfg, progress=False, datasets=tiny_datasets(24, 12, 12))
    return out / "best"


def _encoder_state(model, modality):
    return {k: v.clone() for k, v in model.encoders[modality].state_dict().items()}


def test_load_encoder_weights_copies_one_encoder_and_nothing_else(unimodal_image, tmp_path):
    source, _ = load_model(unimodal_image)
    model = build_model(tiny_run_config(tmp_path).model, INFO)
    before_audio = _encoder_state(model, "audio")
    before_fusion = {k: v.clone() for k, v in model.fusion.state_dict().items()}

    copied = load_encoder_weights(model, "image", unimodal_image)

    assert copied == len(source.encoders["image"].state_dict())
    for name, value in source.encoders["image"].state_dict().items():
        torch.testing.assert_close(model.encoders["image"].state_dict()[name], value, rtol=0, atol=0)
    for name, value in model.encoders["audio"].state_dict().items():
        torch.testing.assert_close(value, before_audio[name], rtol=0, atol=0)
    for name, value in model.fusion.state_dict().items():
        torch.testing.assert_close(value, before_fusion[name], rtol=0, atol=0)


def test_recipe_starts_from_the_named_encoder(unimodal_image, tmp_path):
    source, _ = load_model(unimodal_image)
    # an lr this small leaves the weights where they started, so what we see is the init
    cfg = tiny_run_config(tmp_path / "warm", epochs=1, lr=1e-12, warmup_epochs=0,
                          init_encoders={"image": unimodal_image})
    warm = train(cfg, progress=False, datasets=tiny_datasets(24, 12, 12)).model
    cold_cfg = tiny_run_config(tmp_path / "cold", epochs=1, lr=1e-12, warmup_epochs=0)
    cold = train(cold_cfg, progress=False, datasets=tiny_datasets(24, 12, 12)).model
    for name, value in source.encoders["image"].state_dict().items():
        torch.testing.assert_close(warm.encoders["image"].state_dict()[name], value, atol=1e-8, rtol=0)
    differs = [not torch.allclose(cold.encoders["image"].state_dict()[n], v)
               for n, v in source.encoders["image"].state_dict().items()]
    assert any(differs)


def test_bad_warm_starts_are_config_errors_naming_the_key(unimodal_image, tmp_path):
    data = tiny_datasets(6, 3, 3)
    cfg = tiny_run_config(tmp_path / "a", init_encoders={"image": tmp_path / "nowhere"})
    with pytest.raises(ConfigError, match=r"train.init_encoders.image: checkpoint not found"):
        train(cfg, progress=False, datasets=data)

    cfg = tiny_run_config(tmp_path / "b", init_encoders={"audio": unimodal_image})
    with pytest.raises(ConfigError, match=r"has no audio encoder to start from \(it has \['image'\]\)"):
        train(cfg, progress=False, datasets=data)

    cfg = tiny_run_config(tmp_path / "c", init_encoders={"image": unimodal_image})
    cfg.model.encoders["image"].dim = 24  # not the width the checkpoint was trained with
    with pytest.raises(ConfigError, match=r"image encoder does not fit this model's"):
        train(cfg, progress=False, datasets=data)

    cfg = tiny_run_config(tmp_path / "d", init_encoders={"image": unimodal_image})
    cfg.data.modalities = ["audio", "text"]
    with pytest.raises(ConfigError, match=r"names \['image'\], which this run does not use"):
        train(cfg, progress=False, datasets=data)

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a complete mmfurnace checkpoint"):
        load_encoder_weights(build_model(cfg.model, INFO), "image", tmp_path / "empty")


def test_ablation_fills_in_the_seed_of_each_run(tmp_path):
    base = tiny_run_config(tmp_path / "unused").model_dump(mode="json")
    variant = ConfigVariant("warm", ("train.init_encoders.image=/runs/uni/seed{seed}/best",))
    cfg, error = _variant_config(base, variant, 7, "base")
    assert error is None
    assert cfg.train.init_encoders == {"image": Path("/runs/uni/seed7/best")}


@pytest.mark.slow
def test_ablation_warm_starts_each_seed_from_its_own_baseline(tmp_path):
    runs = tmp_path / "runs"
    base = tiny_run_config(tmp_path / "unused", epochs=1, batch_size=24)
    variants = [
        ConfigVariant("uni-image", ("data.modalities=[image]", "model.fusion=late")),
        ConfigVariant("late", ("model.fusion=late", f"train.init_encoders.image={runs}/uni-image/seed{{seed}}/best")),
    ]
    result = run_ablation(base, variants, seeds=[0, 1], out_dir=tmp_path, progress=False,
                          datasets=tiny_datasets(24, 12, 12))
    assert [v.status for v in result.variants] == ["ok", "ok"]
    assert [v.warm_start for v in result.variants] == [[], ["image"]]
    table = result.files["markdown"].read_text()
    assert "| uni-image | image | late | scratch | 1 |" in table
    assert "| late | audio, image, text | late | checkpoints (image) | 1 |" in table
    for seed in (0, 1):
        _, meta = load_model(runs / "late" / f"seed{seed}" / "best")
        assert meta.config.train.init_encoders["image"] == runs / "uni-image" / f"seed{seed}" / "best"
