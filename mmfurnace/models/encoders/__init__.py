"""Encoders, one file per family. Importing this package registers them in ENCODERS."""

from mmfurnace.models.encoders import (  # noqa: F401
    auto,
    cnn1d,
    cnn2d,
    efficientnet_lite,
    hf,
    lenet,
    mlp,
    resnet,
    speech_embedding,
    transformer,
)
from mmfurnace.models.encoders.cnn1d import CNN1dEncoder
from mmfurnace.models.encoders.cnn2d import CNN2dEncoder
from mmfurnace.models.encoders.efficientnet_lite import EfficientNetLiteEncoder
from mmfurnace.models.encoders.hf import HFEncoder
from mmfurnace.models.encoders.lenet import LeNetEncoder
from mmfurnace.models.encoders.mlp import MLPEncoder
from mmfurnace.models.encoders.resnet import ResNetEncoder
from mmfurnace.models.encoders.speech_embedding import SpeechEmbeddingEncoder
from mmfurnace.models.encoders.transformer import TextTransformerEncoder

__all__ = [
    "CNN1dEncoder",
    "CNN2dEncoder",
    "EfficientNetLiteEncoder",
    "HFEncoder",
    "LeNetEncoder",
    "MLPEncoder",
    "ResNetEncoder",
    "SpeechEmbeddingEncoder",
    "TextTransformerEncoder",
]
