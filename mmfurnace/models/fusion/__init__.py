"""Fusion strategies, one file each. Importing this package registers them in FUSIONS.

Every fusion: ``forward(features: dict[str, EncoderOutput], present: dict[str, Tensor]) ->
FusionOutput`` and an ``out_dim`` attribute. An absent modality (present False for a row, or
missing from ``features`` for the whole batch) never influences the output.
"""

from mmfurnace.models.fusion import cross_attention, early, gated, late, low_rank_tensor, tensor  # noqa: F401
from mmfurnace.models.fusion.cross_attention import CrossAttentionFusion
from mmfurnace.models.fusion.early import EarlyFusion
from mmfurnace.models.fusion.gated import GatedFusion
from mmfurnace.models.fusion.late import LateFusion
from mmfurnace.models.fusion.low_rank_tensor import LowRankTensorFusion
from mmfurnace.models.fusion.tensor import TensorFusion

__all__ = [
    "CrossAttentionFusion",
    "EarlyFusion",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "TensorFusion",
]
