"""Models: encoders per modality, fusion strategies, the classifier that composes them."""

from mmfurnace.models.registry import ENCODERS, FUSIONS  # isort: skip
from mmfurnace.models import encoders, fusion  # noqa: F401  (register the built-ins)
from mmfurnace.models.builders import build_model, describe_model, late_fusion_small
from mmfurnace.models.classifier import ClassifierOutput, MultimodalClassifier
from mmfurnace.models.config import EncoderConfig, ModelConfig
from mmfurnace.models.outputs import EncoderOutput, FusionOutput

__all__ = [
    "ENCODERS",
    "FUSIONS",
    "ClassifierOutput",
    "EncoderConfig",
    "EncoderOutput",
    "FusionOutput",
    "ModelConfig",
    "MultimodalClassifier",
    "build_model",
    "describe_model",
    "late_fusion_small",
]
