"""Rebuild a saved model: its config, its weights file, and (for a pruned model) the attributes
pruning changed. The one way both checkpoints and exports turn weights back into a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.models.surgery import resize_to_


def weight_specs(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of every tensor in a safetensors file, read from its header only."""
    import safetensors

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                view = f.get_slice(key)
                out[key] = (tuple(view.get_shape()), dtypes.get(view.get_dtype(), torch.int64))
            return out
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path}: cannot read weights: {err}") from None


def rebuild_model(
    cfg: Any,
    info: DatasetInfo,
    weights: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    shape_attributes: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The model ``weights`` (a safetensors file) were saved from, in eval mode on ``device``.

    Built from ``cfg`` (a ModelConfig) for ``info``; layers whose saved shapes differ (a
    channel-pruned model) are resized to them and ``shape_attributes`` restored
    (:mod:`mmfurnace.models.surgery`); a model saved in one half-precision dtype is cast to it
    before loading, so it comes back as it was saved. Raises InputError naming the file when
    the weights do not fit.
    """
    from mmfurnace.models.builders import build_model

    specs = weight_specs(weights)
    model = build_model(cfg, info, modalities=modalities)
    resize_to_(model, {k: shape for k, (shape, _) in specs.items()}, shape_attributes)
    floats = {dtype for _, dtype in specs.values() if dtype.is_floating_point}
    if len(floats) == 1 and floats != {torch.float32}:
        model.to(floats.pop())
    model.to(device)
    load_weights_file(model, weights)
    return model.eval()


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``model`` in place (strict: names and shapes must match)."""
    import safetensors.torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        safetensors.torch.load_model(model, str(path), strict=True, device=str(device))
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{path}: weights do not fit this model: {err}") from None
