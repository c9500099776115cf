"""Audio encoder "cnn1d": a 1-D CNN over MFCC frames that honours padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import ChannelNorm, check_rank, halve_mask, masked_mean, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS


class Conv1dBlock(nn.Module):
    """conv(k=5) -> per-frame norm -> ReLU -> zero padded frames -> stride-2 max-pool.

    Zeroing padded frames after the ReLU (values >= 0) makes a padded clip give the same real
    frames as the unpadded clip: the conv sees zeros past the end, as its own zero padding
    would, and a pool window [real, padded] takes the real value."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 5, padding=2)
        self.norm = ChannelNorm(out_channels)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.norm(self.conv(x))).masked_fill(~mask.unsqueeze(1), 0.0)
        return F.max_pool1d(x, 2, ceil_mode=True), halve_mask(mask)


class CNN1dEncoder(nn.Module):
    """``layers`` conv blocks over time (features are channels); each halves the frame count.
    Pooled output is the mean over real frames only."""

    def __init__(
        self, *, in_features: int, dim: int = 64, layers: int = 2, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Conv1dBlock(in_channels=in_features if i == 0 else dim, out_channels=dim)
            for i in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, frames, features), valid (batch, frames) True=real ->
        sequence (batch, ceil(frames / 2**layers), dim) with its valid mask."""
        check_rank("cnn1d", x, (3,), "(batch, frames, features)")
        mask = (
            valid
            if valid is not None
            else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        )
        h = x.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2)
        for block in self.blocks:
            h, mask = run_block(block, h, mask, checkpointing=self.grad_checkpointing)
        tokens = self.drop(h.transpose(1, 2))
        return EncoderOutput(tokens, masked_mean(tokens, mask), mask)


@ENCODERS.register("cnn1d")
def cnn1d(
    *,
    input_shape: tuple[int | None, ...],
    dim: int = 64,
    layers: int = 2,
    dropout: float = 0.1,
) -> CNN1dEncoder:
    if len(input_shape) != 2 or input_shape[-1] is None:
        raise ConfigError(
            f"encoder 'cnn1d' needs inputs shaped (frames, features), got {input_shape}"
        )
    return CNN1dEncoder(in_features=input_shape[-1], dim=dim, layers=layers, dropout=dropout)
