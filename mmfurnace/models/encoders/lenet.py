"""Image encoder "lenet": MultiBench's LeNet-style small CNN (AV-MNIST's image encoder)."""

from __future__ import annotations

from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import ChannelNorm, check_rank, run_block
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

    def forward(self, x: Tensor, padding: Tensor | None = None) -> EncoderOutput:
        """x (batch, channels, height, width) -> sequence (batch, h*w, dim) of the last map."""
        check_rank("lenet", x, (4,), "(batch, channels, height, width)")
        x = self.stem(x)
        for block in self.blocks:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)
        tokens = self.drop(self.proj(x.flatten(2).transpose(1, 2)))
        return EncoderOutput(tokens, tokens.mean(1), None)


@ENCODERS.register("lenet")
def lenet(
    *,
    input_shape: tuple[int | None, ...],
    dim: int = 64,
    layers: int = 2,
    dropout: float = 0.1,
    channels: int = 16,
) -> LeNetEncoder:
    if len(input_shape) != 3 or input_shape[0] is None:
        raise ConfigError(
            f"encoder 'lenet' needs images shaped (channels, height, width), got {input_shape}; "
            "use encoder 'mlp' for feature vectors"
        )
    return LeNetEncoder(in_channels=input_shape[0], dim=dim, layers=layers, dropout=dropout,
                        channels=channels)
