from __future__ import annotations

import pytest
from pydantic import ValidationError

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError
from mmfurnace.models import FUSIONS, ModelConfig, build_model
from mmfurnace.models.builders import build_fusion
from mmfurnace.models.config import EncoderConfig
from mmfurnace.typed_config import StrictModel, apply_overrides, parse


class RunConfig(StrictModel):  # how the run config nests the model section
    model: ModelConfig = ModelConfig()


def test_defaults() -> None:
    cfg = ModelConfig()
    assert cfg.fusion == "cross_attention"
    assert {m: e.name for m, e in cfg.encoders.items()} == {
        "audio": "auto",
        "image": "lenet",
        "text": "transformer",
    }
    assert (cfg.hidden_dim, cfg.proj_dim, cfg.rank) == (64, 32, 4)


def test_auto_audio_encoder_follows_the_audio_form() -> None:
    """MFCC frames of varying length -> cnn1d (2 blocks); a fixed 112x112 spectrogram ->
    MultiBench's LeNet shape (6 channels, 5 blocks); set sizes are honoured."""
    from mmfurnace.models.builders import build_encoder
    from mmfurnace.models.encoders import CNN1dEncoder
    from mmfurnace.models.encoders.lenet import SpectrogramLeNet

    def info(shape: tuple) -> DatasetInfo:
        return DatasetInfo(modalities=("audio",), num_classes=2, multilabel=False,
                           class_names=("a", "b"), input_shapes={"audio": shape},
                           input_dtypes={"audio": "float32"})

    mfcc = build_encoder("audio", EncoderConfig(name="auto"), info((None, 20)))
    assert isinstance(mfcc, CNN1dEncoder)
    assert len(mfcc.blocks) == 2
    spec = build_encoder("audio", EncoderConfig(name="auto"), info((112, 112)))
    assert isinstance(spec, SpectrogramLeNet)
    assert (spec.stem.conv.out_channels, len(spec.blocks)) == (6, 5)
    assert spec.proj.in_features == 6 * 2**5  # 192, MultiBench's audio feature width
    sized = build_encoder("audio", EncoderConfig(name="auto", channels=4, layers=2), info((112, 112)))
    assert (sized.stem.conv.out_channels, len(sized.blocks)) == (4, 2)
    with pytest.raises(ConfigError, match="encoder 'auto' is for audio"):
        build_encoder("audio", EncoderConfig(name="auto"), info((1, 28, 28)))


def test_unknown_fusion_lists_known_names_and_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        ModelConfig(fusion="lat")
    assert "fusion" in str(err.value)
    for name in FUSIONS.names():
        assert name in str(err.value)
    with pytest.raises(
        ConfigError, match=r"model\.fusion: .*unknown fusion 'lat'; known: cross_attention, early"
    ):
        parse(RunConfig, {"model": {"fusion": "lat"}})


def test_late_head_reaches_the_fusion_and_is_validated() -> None:
    cfg = parse(RunConfig, {"model": {"fusion": "late", "late_head": "linear"}}).model
    fusion = build_fusion(cfg, {"audio": 6, "image": 4}, num_classes=3)
    assert [type(layer).__name__ for layer in fusion.heads["audio"]] == ["Dropout", "Linear"]
    assert fusion.heads["audio"].fc1.out_features == 3
    default = build_fusion(ModelConfig(fusion="late"), {"audio": 6}, num_classes=3)
    assert default.heads["audio"].fc2.out_features == 3  # the MLP head stays the default
    with pytest.raises(ConfigError, match=r"model\.late_head"):
        parse(RunConfig, {"model": {"late_head": "deep"}})


def test_unknown_encoder_name_is_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.encoders\.image\.name: .*known: auto, cnn1d, cnn2d, .*hf, lenet, .*transformer"
    ):
        parse(RunConfig, {"model": {"encoders": {"image": {"name": "vit"}}}})


@pytest.mark.parametrize(
    "raw",
    [
        {"encoders": {"image": {"name": "lenet", "dim": 0}}},
        {"encoders": {"audio": {"dim": -3}}},
        {"hidden_dim": 0},
        {"proj_dim": -1},
        {"encoders": {"text": {"dropout": 1.0}}},
        {"encoders": {"video": {"name": "mlp"}}},
        {"hiden_dim": 32},
    ],
)
def test_bad_values_are_rejected(raw: dict) -> None:
    with pytest.raises(ConfigError):
        parse(RunConfig, {"model": raw})


def test_overriding_one_encoder_key_keeps_the_other_defaults() -> None:
    raw = apply_overrides({}, ["model.encoders.image.dim=128", "model.fusion=late"])
    cfg = parse(RunConfig, raw).model
    assert cfg.encoders["image"] == EncoderConfig(name="lenet", dim=128)
    assert cfg.encoders["audio"].name == "auto"
    assert cfg.encoders["text"].name == "transformer"
    assert cfg.fusion == "late"


def test_builder_errors_name_the_config_field() -> None:
    info = DatasetInfo(
        modalities=("image", "text"),
        num_classes=23,
        multilabel=True,
        class_names=tuple("x" * 23),
        input_shapes={"image": (4096,), "text": (None, 300)},
        input_dtypes={"image": "float32", "text": "float32"},
    )
    with pytest.raises(ConfigError, match=r"model\.encoders\.image: .*use encoder 'mlp'"):
        build_model(ModelConfig(), info)
    with pytest.raises(ConfigError, match=r"model\.fusion: .*divisible by heads"):
        build_model(
            ModelConfig(
                encoders={"image": {"name": "mlp"}, "text": {"name": "mlp"}}, hidden_dim=30
            ),
            info,
        )
    mmimdb = ModelConfig(
        encoders={"image": {"name": "mlp"}, "text": {"name": "mlp"}}, fusion="late"
    )
    model = build_model(mmimdb, info)
    assert model.multilabel
    assert model.modalities == ["image", "text"]


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_conv_width_comes_from_the_encoder_config(name: str) -> None:
    from mmfurnace.models.builders import build_encoder

    info = DatasetInfo(modalities=("image",), num_classes=2, multilabel=False, class_names=("a", "b"),
                       input_shapes={"image": (1, 8, 8)}, input_dtypes={"image": "float32"})
    narrow = build_encoder("image", EncoderConfig(name=name, channels=4), info)
    wide = build_encoder("image", EncoderConfig(name=name), info)
    assert narrow.stem[0].out_channels == 4
    assert wide.stem[0].out_channels == 16
    assert narrow.proj.in_features == 4 * 2 ** 2  # two blocks, each doubling the width
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    with pytest.raises(ValueError, match="channels"):
        EncoderConfig(name=name, channels=0)
