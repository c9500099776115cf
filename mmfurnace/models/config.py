"""Config of the model section: which encoder per modality, which fusion, and their sizes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

import mmfurnace.models.encoders  # noqa: F401  (fills ENCODERS)
import mmfurnace.models.fusion  # noqa: F401  (fills FUSIONS)
from mmfurnace.modalities import Modality
from mmfurnace.models.registry import ENCODERS, FUSIONS
from mmfurnace.typed_config import StrictModel

# "auto" for audio: cnn1d over variable-length feature frames (MFCC, log-mel), lenet over a
# fixed-size spectrogram image (AV-MNIST's 112x112): see encoders/auto.py.
DEFAULT_ENCODERS: dict[str, str] = {"audio": "auto", "image": "lenet", "text": "transformer"}


FeatureNorm = Literal["none", "layernorm", "standardize"]

_NOT_FOR_BUILDERS = ("name", "freeze", "unfreeze_top")

# Encoders that load weights trained elsewhere (ImageNet, sentence pairs, speech) when built;
# the others start from random weights (or a train.init_encoders checkpoint).
PRETRAINED_ENCODERS = frozenset({"efficientnet_lite0", "minilm", "speech_embedding", "hf"})


class EncoderConfig(StrictModel):
    name: str
    dim: int = Field(64, gt=0)
    layers: int | None = Field(
        2, ge=1, description="blocks / layers; null: the encoder's default for its input "
        "(lenet over a spectrogram: enough blocks to bring its frames down to 2)"
    )
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    channels: int | None = Field(
        16, gt=0, description="first conv width of the CNN encoders (lenet, resnet, cnn2d); "
        "each later block doubles it. null: the encoder's default for its input (lenet over "
        "a spectrogram: 6, MultiBench's AV-MNIST audio LeNet)"
    )
    path: Path | None = None  # local model folder, for name "hf" (and "minilm": a copy of it)
    freeze: bool = Field(
        False, description="train none of this encoder's weights (it runs in eval mode); "
        "a wholly frozen encoder's outputs are cached once (train.feature_cache)"
    )
    unfreeze_top: int = Field(
        0, ge=0, description="with freeze: keep the encoder's last N blocks trainable "
        "(fine-tuning the top of a pretrained backbone)"
    )

    @model_validator(mode="before")
    @classmethod
    def _auto_sizes_follow_the_input(cls, raw: Any) -> Any:
        # "auto" picks the encoder from the input's form, so its sizes default to that
        # encoder's own defaults for that input rather than to one fixed number.
        if isinstance(raw, dict) and raw.get("name") == "auto":
            raw = {"layers": None, "channels": None, **raw}
        return raw

    @field_validator("name")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        ENCODERS[name]  # raises ConfigError (a ValueError) listing the known names
        return name

    @model_validator(mode="after")
    def _unfreeze_needs_freeze(self) -> EncoderConfig:
        if self.unfreeze_top and not self.freeze:
            raise ValueError(
                f"unfreeze_top {self.unfreeze_top} needs freeze: true (it unfreezes the top "
                "blocks of a frozen encoder); without freeze every block trains already"
            )
        return self

    @model_validator(mode="after")
    def _settings_the_encoder_takes(self) -> EncoderConfig:
        unused = self.unused_settings()
        if unused:
            takes = sorted(settings_taken(ENCODERS[self.name], self.settings()) or ())
            raise ValueError(
                f"encoder {self.name!r} has no {', '.join(repr(k) for k in unused)} setting "
                f"(it takes {', '.join(takes) or 'none of them'})"
            )
        return self

    @property
    def pretrained(self) -> bool:
        """Whether the encoder loads pretrained weights when built (PRETRAINED_ENCODERS)."""
        return self.name in PRETRAINED_ENCODERS

    def settings(self) -> dict[str, Any]:
        """The settings the encoder's builder may take (``build_encoder`` applies the name,
        ``freeze`` and ``unfreeze_top`` to every encoder itself)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k not in _NOT_FOR_BUILDERS}

    def unused_settings(self) -> list[str]:
        """Settings changed from their default that this encoder's builder does not take."""
        taken = settings_taken(ENCODERS[self.name], self.settings())
        if taken is None:
            return []
        fields = type(self).model_fields
        return [k for k, v in self.settings().items()
                if k not in taken and v != fields[k].get_default(call_default_factory=True)]


def settings_taken(builder: Callable[..., Any], offered: dict[str, Any]) -> set[str] | None:
    """Which of ``offered`` a registered builder's signature takes; None when it takes any
    keyword (``**kwargs``), as builders written before this check may."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k for k in offered if k in params}


class ModelConfig(StrictModel):
    encoders: dict[Modality, EncoderConfig] = Field(
        default_factory=lambda: {m: EncoderConfig(name=n) for m, n in DEFAULT_ENCODERS.items()}
    )
    fusion: str = "cross_attention"
    hidden_dim: int = Field(64, gt=0)
    heads: int = Field(4, ge=1)
    layers: int = Field(1, ge=1)
    rank: int = Field(4, ge=1)
    tensor_dim: int = Field(
        16, gt=0
    )  # tensor fusion: each modality is projected to this before the outer product
    proj_dim: int = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    late_head: Literal["mlp", "linear"] = Field(
        "mlp", description="late fusion: each modality's classifier, an MLP (hidden_dim wide) "
        "or one linear layer (dropout on its input)"
    )
    feature_norm: FeatureNorm = Field(
        "none", description="each modality's encoder output before the fusion: 'layernorm' "
        "(a LayerNorm per modality), 'standardize' (minus the train split's mean, over its "
        "std, per feature; fitted once before training and saved with the model) or 'none'. "
        "Pretrained encoders' outputs differ in scale; frozen ones stay cached either way"
    )

    @field_validator("feature_norm", mode="before")
    @classmethod
    def _feature_norm_was_a_switch(cls, value: Any) -> Any:
        # configs and checkpoints from before 'standardize' hold true/false
        if isinstance(value, bool):
            return "layernorm" if value else "none"
        return value

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, name: str) -> str:
        FUSIONS[name]
        return name

    @field_validator("encoders", mode="before")
    @classmethod
    def _fill_defaults(cls, raw: Any) -> Any:
        # Setting one modality (or one key of it, e.g. encoders.image.dim=128) keeps the
        # defaults of everything else instead of dropping the other modalities.
        if not isinstance(raw, dict):
            return raw
        merged: dict[Any, Any] = {m: {"name": n} for m, n in DEFAULT_ENCODERS.items()}
        for modality, value in raw.items():
            if isinstance(value, dict) and modality in DEFAULT_ENCODERS:
                merged[modality] = {"name": DEFAULT_ENCODERS[modality], **value}
            else:
                merged[modality] = value
        return merged
