"""Freezing any encoder (model.encoders.<m>.freeze / unfreeze_top)."""

from __future__ import annotations

import pytest
import torch

from mmfurnace.errors import ConfigError
from mmfurnace.models import EncoderConfig, build_model
from mmfurnace.models.freeze import freeze_, is_frozen
from tests.models.conftest import make_inputs, tiny_config


def test_a_frozen_encoder_trains_nothing_and_stays_in_eval_mode(tiny_info) -> None:
    cfg = tiny_config("cross_attention")
    cfg.encoders["image"] = EncoderConfig(name="lenet", dim=16, layers=2, dropout=0.5, freeze=True)
    model = build_model(cfg, tiny_info).train()
    image = model.encoders["image"]
    assert is_frozen(image)
    assert not image.training
    assert not image.drop.training
    assert model.fusion.training
    assert model.encoders["audio"].training
    assert not any(p.requires_grad for p in image.parameters())

    inputs, valid = make_inputs()
    present = {m: torch.ones(6, dtype=torch.bool) for m in inputs}
    # dropout 0.5 in train mode would make two calls differ; frozen, it is the same function
    first = model.encode("image", inputs["image"]).pooled
    torch.testing.assert_close(model.encode("image", inputs["image"]).pooled, first)
    model(inputs, present, valid).logits.sum().backward()
    assert all(p.grad is None for p in image.parameters())
    assert all(p.grad is not None for p in model.encoders["audio"].parameters())


def test_unfreeze_top_needs_an_encoder_that_lists_its_blocks(tiny_info) -> None:
    cfg = tiny_config("late")
    cfg.encoders["image"] = EncoderConfig(name="lenet", dim=16, freeze=True, unfreeze_top=1)
    with pytest.raises(ConfigError, match=r"model.encoders.image: lenet: LeNetEncoder does not list its blocks"):
        build_model(cfg, tiny_info)


def test_freeze_rejects_a_negative_count() -> None:
    with pytest.raises(ConfigError, match="unfreeze_top must be >= 0"):
        freeze_(torch.nn.Linear(2, 2), unfreeze_top=-1)


def test_unfreeze_top_on_speech_embedding_trains_only_its_head() -> None:
    from mmfurnace.models.encoders.speech_embedding import SpeechEmbeddingEncoder

    encoder = freeze_(SpeechEmbeddingEncoder(), unfreeze_top=1, name="audio")
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in encoder.named_parameters() if n.startswith("head.")}
    assert trainable
