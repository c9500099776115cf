"""Encoder "mlp": for precomputed features of any modality, (batch, F) or (batch, seq, F), and
for small images as flattened pixels (batch, C, H, W) -- MultiBench's MLP baselines."""

from __future__ import annotations

import math

from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import check_rank, masked_mean, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS


class MLPEncoder(nn.Module):
    """``layers`` Linear-GELU-Dropout blocks applied to each feature vector, then LayerNorm.
    A flat (batch, F) input, or an image flattened to one, is a sequence of one token."""

    def __init__(
        self, *, in_features: int, dim: int = 64, layers: int = 2, dropout: float = 0.1,
        images: bool = False,
    ) -> None:
        super().__init__()
        self.images = images  # built for (batch, C, H, W) pixels rather than feature vectors
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(in_features if i == 0 else dim, dim), nn.GELU(), nn.Dropout(dropout)
            )
            for i in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, F) or (batch, seq, F), valid (batch, seq) True=real -> (batch, seq|1, dim)."""
        if self.images:
            check_rank("mlp", x, (4,), "(batch, channels, height, width)")
            x = x.flatten(1)  # one token of all its pixels
        else:
            check_rank("mlp", x, (2, 3), "(batch, features) or (batch, seq, features)")
        h = x.unsqueeze(1) if x.dim() == 2 else x
        for block in self.blocks:
            h = run_block(block, h, checkpointing=self.grad_checkpointing)
        h = self.norm(h)
        mask = valid if x.dim() == 3 else None
        return EncoderOutput(h, masked_mean(h, mask), mask)


@ENCODERS.register("mlp")
def mlp(
    *,
    input_shape: tuple[int | None, ...],
    dim: int = 64,
    layers: int = 2,
    dropout: float = 0.1,
) -> MLPEncoder:
    if len(input_shape) == 3 and None not in input_shape:  # an image: its pixels, flattened
        return MLPEncoder(in_features=math.prod(input_shape), dim=dim, layers=layers, dropout=dropout,
                          images=True)
    if len(input_shape) not in (1, 2) or input_shape[-1] is None:
        raise ConfigError(
            "encoder 'mlp' needs inputs shaped (features,), (seq, features) or "
            f"(channels, height, width), got {input_shape}"
        )
    return MLPEncoder(in_features=input_shape[-1], dim=dim, layers=layers, dropout=dropout)
