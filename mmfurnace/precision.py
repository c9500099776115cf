"""Mixed precision by name ("fp32", "bf16", "fp16"): the autocast region every part of
mmfurnace (training, evaluation, the PyTorch runtimes) runs a forward pass in."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The autocast region for ``precision`` on ``device``; a no-op for "fp32"."""
    if precision not in DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])
