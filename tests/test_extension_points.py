"""Extension points in one place: a fusion registers its channel pruner next to itself, an
encoder builder gets only the settings it names (one it does not name is a ConfigError), and
the dataset names a config accepts are the DATASETS registry's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfurnace.compress.channels import channel_prune_
from mmfurnace.compress.config import ChannelConfig
from mmfurnace.config import load_run_config
from mmfurnace.data.config import DataConfig
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError
from mmfurnace.export.inputs import make_example_batch
from mmfurnace.models import ENCODERS, FUSIONS, build_model
from mmfurnace.models.builders import build_encoder
from mmfurnace.models.config import EncoderConfig, settings_taken
from mmfurnace.models.fusion import EarlyFusion
from mmfurnace.models.pruning import fusion_pruner, shrink_proj_input
from mmfurnace.models.registry import FUSION_PRUNERS
from tests.models.conftest import tiny_config

DIMS = {"audio": 6, "image": 8, "text": 5}


@pytest.fixture
def tiny_info() -> DatasetInfo:
    return DatasetInfo(
        modalities=("audio", "image", "text"), num_classes=4, multilabel=False, class_names=("a", "b", "c", "d"),
        input_shapes={"image": (1, 12, 12), "audio": (None, 8), "text": (None,)},
        input_dtypes={"image": "float32", "audio": "float32", "text": "int64"}, vocab_size=50,
    )


# --- fusions and their pruners -----------------------------------------------------------------


@pytest.mark.parametrize("name", FUSIONS.names())
def test_every_built_in_fusion_registers_its_pruner(name):
    fusion = FUSIONS[name](dims=dict(DIMS), num_classes=3, hidden_dim=8, heads=2, tensor_dim=3, rank=2)
    assert type(fusion).__name__ in FUSION_PRUNERS


class UnprunableFusion(EarlyFusion):
    """A fusion someone added without a pruner."""


class ProbedFusion(EarlyFusion):
    """A new fusion that registers a pruner next to itself (here: early fusion's, counted)."""


PRUNED = []


@fusion_pruner(ProbedFusion, shrink_input=shrink_proj_input)
def _prune_probed(f, pr):
    PRUNED.append(type(f).__name__)
    return FUSION_PRUNERS["EarlyFusion"].prune(f, pr)


def _model_with(fusion_cls, info):
    model = build_model(tiny_config("early"), info).eval()
    dims = {m: e.out_dim for m, e in model.encoders.items()}
    replacement = fusion_cls(dims=dims, hidden_dim=16, dropout=0.0)
    replacement.load_state_dict(model.fusion.state_dict())
    model.fusion = replacement
    return model


def test_a_fusion_without_a_pruner_is_a_config_error_listing_those_with_one(tiny_info):
    model = _model_with(UnprunableFusion, tiny_info)
    with pytest.raises(ConfigError, match=r"no channel pruning for fusion UnprunableFusion.*CrossAttentionFusion.*EarlyFusion"):
        channel_prune_(model, ChannelConfig(sparsity=0.5), example=make_example_batch(tiny_info, 4))


def test_a_new_fusion_prunes_with_the_pruner_it_registered(tiny_info):
    model = _model_with(ProbedFusion, tiny_info)
    before = sum(p.numel() for p in model.parameters())
    channel_prune_(model, ChannelConfig(sparsity=0.5), example=make_example_batch(tiny_info, 4))
    assert PRUNED == ["ProbedFusion"]
    assert sum(p.numel() for p in model.parameters()) < 0.6 * before
    out = model.forward_batch(make_example_batch(tiny_info, 3, seed=1))
    assert out.logits.isfinite().all()


def test_checkpoints_with_numbered_sublayers_still_load(tiny_info):
    """Fusion sublayers are named (mlp.fc1) for the pruners; weights saved as mlp.0 load too."""
    for fusion in ("early", "late", "gated", "tensor"):
        model = build_model(tiny_config(fusion), tiny_info).eval()
        names = {"fc1": "0", "act": "1", "drop": "2", "fc2": "3"}
        if fusion == "gated":
            names = {"fc": "0", "fc1": "0", "fc2": "2"}
        if fusion == "tensor":
            names = {"fc1": "1", "fc2": "3"}
        old = {}
        for key, value in model.state_dict().items():
            parts = key.split(".")
            parts = [names.get(p, p) if i >= 2 else p for i, p in enumerate(parts)]
            old[".".join(parts)] = value
        assert old.keys() != model.state_dict().keys()
        fresh = build_model(tiny_config(fusion), tiny_info).eval()
        fresh.load_state_dict(old, strict=True)
        batch = make_example_batch(tiny_info, 3, seed=2)
        torch.testing.assert_close(fresh.forward_batch(batch).logits, model.forward_batch(batch).logits)


# --- encoders take what they name ----------------------------------------------------------------


def test_a_setting_the_encoder_does_not_take_is_a_config_error_at_parse_time():
    with pytest.raises(ConfigError, match=r"model\.encoders\.text.*'transformer' has no 'channels'.*takes"):
        load_run_config(None, ["model.encoders.text.channels=8"])
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio.*'cnn1d' has no 'heads'"):
        # named explicitly: the default audio encoder, "auto", picks its builder from the input
        load_run_config(None, ["model.encoders.audio.name=cnn1d", "model.encoders.audio.heads=2"])
    cfg = load_run_config(None, ["model.encoders.image.channels=8", "model.encoders.text.heads=2"])
    assert cfg.model.encoders["image"].channels == 8


def test_the_builder_gets_only_the_keywords_it_names(tiny_info):
    seen = {}

    def probe(*, input_shape, dim=64):
        seen.update(input_shape=input_shape, dim=dim)
        return nn.Linear(1, 1)

    name = "test-probe-encoder"
    if name not in ENCODERS:
        ENCODERS.register(name)(probe)
    build_encoder("image", EncoderConfig(name=name, dim=7), tiny_info)
    assert seen == {"input_shape": (1, 12, 12), "dim": 7}
    with pytest.raises(ValueError, match="has no 'layers'"):
        EncoderConfig(name=name, layers=3)


def test_a_builder_with_var_keywords_gets_everything():
    def old_style(*, dim=64, **_):
        return nn.Identity()

    assert settings_taken(old_style, {"dim": 1, "channels": 2}) is None
    assert settings_taken(lambda *, dim=64: None, {"dim": 1, "channels": 2}) == {"dim"}


def test_a_distilled_student_scales_only_the_widths_each_encoder_has():
    from mmfurnace.compress.config import DistillConfig
    from mmfurnace.compress.distill import student_config

    student = student_config(tiny_config("cross_attention"), DistillConfig(width=0.5, fusion="late"))
    assert student.encoders["text"].channels == EncoderConfig.model_fields["channels"].default
    assert student.encoders["image"].dim == 8


# --- datasets ------------------------------------------------------------------------------------


def test_dataset_names_come_from_the_registry():
    from mmfurnace.data.datasets import DATASETS

    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; known: .*avmnist.*manifest"):
        DataConfig(dataset="nope")
    name = "test-registered-dataset"
    if name not in DATASETS:
        DATASETS.register(name)(lambda cfg, split: [])
    assert DataConfig(dataset=name).dataset == name
