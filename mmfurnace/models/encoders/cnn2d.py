"""Audio encoder "cnn2d": a 2-D CNN over the (frames, features) spectrogram seen as an image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import ChannelNorm, check_rank, halve_mask, masked_mean, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS


class Conv2dBlock(nn.Module):
    """3x3 conv -> per-position norm -> ReLU -> zero padded frames -> 2x2 max-pool (see cnn1d
    for why padded input then cannot change real outputs)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = ChannelNorm(out_channels)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.norm(self.conv(x))).masked_fill(~mask[:, None, :, None], 0.0)
        return F.max_pool2d(x, 2, ceil_mode=True), halve_mask(mask)


class CNN2dEncoder(nn.Module):
    """``layers`` conv blocks (channels doubling) over (frames, features); the feature axis is
    then averaged away, so the sequence runs over time and keeps a valid mask."""

    def __init__(
        self, *, dim: int = 64, layers: int = 2, channels: int = 16, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Conv2dBlock(
                in_channels=1 if i == 0 else channels * 2 ** (i - 1), out_channels=channels * 2**i
            )
            for i in range(layers)
        )
        self.proj = nn.Linear(channels * 2 ** (layers - 1), dim)
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, frames, features), valid (batch, frames) True=real ->
        sequence (batch, ceil(frames / 2**layers), dim) with its valid mask."""
        check_rank("cnn2d", x, (3,), "(batch, frames, features)")
        mask = (
            valid
            if valid is not None
            else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        )
        h = x.masked_fill(~mask.unsqueeze(-1), 0.0).unsqueeze(1)
        for block in self.blocks:
            h, mask = run_block(block, h, mask, checkpointing=self.grad_checkpointing)
        tokens = self.proj(h.mean(3).transpose(1, 2)).masked_fill(~mask.unsqueeze(-1), 0.0)
        tokens = self.drop(tokens)
        return EncoderOutput(tokens, masked_mean(tokens, mask), mask)


@ENCODERS.register("cnn2d")
def cnn2d(
    *,
    input_shape: tuple[int | None, ...],
    dim: int = 64,
    layers: int = 2,
    dropout: float = 0.1,
    channels: int = 16,
) -> CNN2dEncoder:
    if len(input_shape) != 2:
        raise ConfigError(
            f"encoder 'cnn2d' needs inputs shaped (frames, features), got {input_shape}"
        )
    return CNN2dEncoder(dim=dim, layers=layers, dropout=dropout,
                        channels=channels)
