"""Mixed precision: which autocast dtype, and a GradScaler only where fp16 needs one (CUDA)."""

from __future__ import annotations

import torch

from mmfurnace.errors import ConfigError
from mmfurnace.precision import DTYPES as DTYPES
from mmfurnace.precision import autocast as autocast


def check_precision(precision: str, device: torch.device) -> None:
    """Reject combinations that cannot train: fp16 autocast + GradScaler needs a CUDA device."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs a CUDA device (training on {device}); "
            "use precision=bf16 for mixed precision on the CPU, or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16")


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
