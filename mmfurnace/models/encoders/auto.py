"""Encoder "auto" (the audio default): the encoder that fits the audio's form.

Audio reaches mmfurnace in two forms. Feature frames of varying length (MFCC or log-mel
computed from WAVs, shape (None, features)) are a sequence: ``cnn1d`` encodes them over time
and honours padding. A fixed-size spectrogram image (AV-MNIST's (112, 112)) is an image:
``lenet`` encodes it as one, with MultiBench's depth and width by default. On AV-MNIST the
default cnn1d's audio branch contributed nothing inside a fusion (audio alone 11-16 % of a
fused model, chance 10 %) and the LeNet's did (README, AV-MNIST).

The choice depends only on the input shape, so a model rebuilt from its saved config and
its dataset's shapes is the same model.
"""

from __future__ import annotations

from torch import nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.registry import ENCODERS


def pick_audio_encoder(input_shape: tuple[int | None, ...]) -> str:
    """"lenet" for a fixed (frames, features) spectrogram, "cnn1d" for variable-length frames."""
    if len(input_shape) != 2 or input_shape[-1] is None:
        raise ConfigError(
            f"encoder 'auto' is for audio shaped (frames, features), got {input_shape}; "
            "name the encoder (lenet, resnet, mlp, transformer, ...)"
        )
    return "lenet" if input_shape[0] is not None else "cnn1d"


@ENCODERS.register("auto")
def auto(*, input_shape: tuple[int | None, ...], **kwargs: object) -> nn.Module:
    from mmfurnace.models.config import settings_taken  # config imports the encoder registry

    builder = ENCODERS[pick_audio_encoder(input_shape)]
    offered = {"input_shape": input_shape, **kwargs}
    taken = settings_taken(builder, offered)
    return builder(**(offered if taken is None else {k: offered[k] for k in taken}))
