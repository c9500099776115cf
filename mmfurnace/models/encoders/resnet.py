"""Image encoder "resnet": a deeper small residual CNN (ResNet basic blocks, LayerNorm2d)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import ChannelNorm, check_rank, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS


class BasicBlock(nn.Module):
    """Two 3x3 convs with a skip connection (1x1 conv when the shape changes)."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            ChannelNorm(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            ChannelNorm(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride), ChannelNorm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """A 3x3 stem, then ``layers`` stages of two basic blocks; each stage halves the map and
    doubles the channels. The last map's positions, projected to ``dim``, are the sequence."""

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
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), ChannelNorm(channels), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        for i in range(layers):
            width = channels * 2 ** (i + 1)
            blocks.append(BasicBlock(in_channels=width // 2, out_channels=width, stride=2))
            blocks.append(BasicBlock(in_channels=width, out_channels=width, stride=1))
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Linear(channels * 2**layers, dim)
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, channels, height, width) -> sequence (batch, h*w, dim) of the last map."""
        check_rank("resnet", x, (4,), "(batch, channels, height, width)")
        x = self.stem(x)
        for block in self.blocks:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)
        tokens = self.drop(self.proj(x.flatten(2).transpose(1, 2)))
        return EncoderOutput(tokens, tokens.mean(1), None)


@ENCODERS.register("resnet")
def resnet(
    *,
    input_shape: tuple[int | None, ...],
    dim: int = 64,
    layers: int = 2,
    dropout: float = 0.1,
    channels: int = 16,
) -> ResNetEncoder:
    if len(input_shape) != 3 or input_shape[0] is None:
        raise ConfigError(
            f"encoder 'resnet' needs images shaped (channels, height, width), got {input_shape}; "
            "use encoder 'mlp' for feature vectors"
        )
    return ResNetEncoder(in_channels=input_shape[0], dim=dim, layers=layers, dropout=dropout,
                         channels=channels)
