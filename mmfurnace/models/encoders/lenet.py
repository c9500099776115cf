"""Encoder "lenet": MultiBench's LeNet-style small CNN, for images (AV-MNIST's image encoder)
and for spectrograms seen as one-channel images (AV-MNIST's audio encoder)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import (
    ChannelNorm,
    MaskedInstanceNorm,
    check_rank,
    halve_mask,
    masked_mean,
    run_block,
)
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS


def conv_pool(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """conv -> norm -> ReLU -> 2x2 max-pool (ceil mode, so tiny maps never shrink to 0)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
        ChannelNorm(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
    )


class LeNetEncoder(nn.Module):
    """A 5x5 conv stem, then ``layers`` 3x3 conv blocks that each halve the map and double the
    channels. The last map's positions, projected to ``dim``, are the sequence."""

    def __init__(
        self,
        *,
        in_channels: int,
        dim: int = 64,
        layers: int = 2,
        channels: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.stem = conv_pool(in_channels, channels, kernel=5)
        self.blocks = nn.ModuleList(
            conv_pool(channels * 2**i, channels * 2 ** (i + 1), kernel=3) for i in range(layers)
        )
        self.proj = nn.Linear(channels * 2**layers, dim)
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, channels, height, width) -> sequence (batch, h*w, dim) of the last map."""
        check_rank("lenet", x, (4,), "(batch, channels, height, width)")
        x = self.stem(x)
        for block in self.blocks:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)
        tokens = self.drop(self.proj(x.flatten(2).transpose(1, 2)))
        return EncoderOutput(tokens, tokens.mean(1), None)


class MaskedConvPool(nn.Module):
    """conv -> instance norm over real frames -> ReLU -> zero padded frames -> 2x2 max-pool
    (ceil mode) over a (batch, channels, frames, features) map whose frames may be padding
    (see cnn1d for why padded frames then cannot change the real ones, and
    :class:`~mmfurnace.models.layers.MaskedInstanceNorm` for why not ChannelNorm here)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        # no conv bias: the norm right after it subtracts each channel's mean anyway
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.norm = MaskedInstanceNorm(out_channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """mask None: every frame is real (no masking work at all)."""
        x = F.relu(self.norm(self.conv(x), mask))
        if mask is None:
            return F.max_pool2d(x, 2, ceil_mode=True), None
        x = x.masked_fill(~mask[:, None, :, None], 0.0)
        return F.max_pool2d(x, 2, ceil_mode=True), halve_mask(mask)


class SpectrogramLeNet(nn.Module):
    """LeNet over a (frames, features) spectrogram seen as a one-channel image, as MultiBench
    encodes AV-MNIST's 112x112 audio: a 5x5 conv stem, then ``layers`` 3x3 blocks that each
    halve the map and double the channels. The feature axis of the last map is averaged
    away, so the sequence runs over time and keeps a valid mask."""

    def __init__(
        self, *, dim: int = 64, layers: int = 2, channels: int = 16, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.stem = MaskedConvPool(1, channels, kernel=5)
        self.blocks = nn.ModuleList(
            MaskedConvPool(channels * 2**i, channels * 2 ** (i + 1), kernel=3)
            for i in range(layers)
        )
        self.proj = nn.Linear(channels * 2**layers, dim)
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, frames, features), valid (batch, frames) True=real ->
        sequence (batch, ceil(frames / 2**(layers + 1)), dim) with its valid mask."""
        check_rank("lenet", x, (3,), "(batch, frames, features) for a spectrogram")
        if valid is not None and bool(valid.all()):
            valid = None  # e.g. AV-MNIST's fixed 112 frames: skip every masking op
        if valid is not None:
            x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        h, mask = self.stem(x.unsqueeze(1), valid)
        for block in self.blocks:
            h, mask = run_block(block, h, mask, checkpointing=self.grad_checkpointing)
        tokens = self.proj(h.mean(3).transpose(1, 2))
        if mask is not None:
            tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
        tokens = self.drop(tokens)
        return EncoderOutput(tokens, masked_mean(tokens, mask), mask)


SPECTROGRAM_CHANNELS = 6  # MultiBench's AV-MNIST audio LeNet(1, 6, 5)


def spectrogram_blocks(input_shape: tuple[int | None, ...]) -> int:
    """Blocks after the stem that bring the frames (the features when frames vary) down to
    2 or fewer, as MultiBench's LeNet(1, 6, 5) does for 112 frames. Depth matters here: with
    16 channels and 2 blocks (a 28x28 last map of a 112x112 spectrogram) the AV-MNIST audio
    branch learned nothing inside an early fusion (audio alone 13.8 %); with 6 channels and
    5 blocks it did (37.2 %; README, AV-MNIST)."""
    size = input_shape[0] if input_shape[0] is not None else input_shape[1]
    assert size is not None, input_shape
    assert size > 0, input_shape
    blocks, side = 0, math.ceil(size / 2)  # after the stem
    while side > 2:
        side, blocks = math.ceil(side / 2), blocks + 1
    return max(1, blocks)


@ENCODERS.register("lenet")
def lenet(
    *,
    input_shape: tuple[int | None, ...],
    dim: int = 64,
    layers: int | None = None,
    dropout: float = 0.1,
    channels: int | None = None,
) -> LeNetEncoder | SpectrogramLeNet:
    """Images (channels, height, width) -> :class:`LeNetEncoder` (default 2 blocks, 16
    channels); spectrograms or other (frames, features) sequences -> :class:`SpectrogramLeNet`
    (default :func:`spectrogram_blocks`, 6 channels)."""
    if len(input_shape) == 2 and input_shape[-1] is not None:
        return SpectrogramLeNet(
            dim=dim,
            layers=spectrogram_blocks(input_shape) if layers is None else layers,
            dropout=dropout,
            channels=SPECTROGRAM_CHANNELS if channels is None else channels,
        )
    layers = 2 if layers is None else layers
    channels = 16 if channels is None else channels
    if len(input_shape) != 3 or input_shape[0] is None:
        raise ConfigError(
            f"encoder 'lenet' needs images shaped (channels, height, width) or spectrograms "
            f"shaped (frames, features), got {input_shape}; use encoder 'mlp' for feature vectors"
        )
    return LeNetEncoder(in_channels=input_shape[0], dim=dim, layers=layers, dropout=dropout,
                        channels=channels)
