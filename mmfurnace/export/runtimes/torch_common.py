"""Shared by the PyTorch runtimes (eager, compile, torchscript): loading and calling modules."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmfurnace.errors import ConfigError, InputError, MissingDependencyError
from mmfurnace.export.spec import ExportSpec
from mmfurnace.export.wrappers import wrap_graph
from mmfurnace.precision import autocast as autocast  # the runtimes import it from here


def torch_description(device: torch.device, threads: int | None) -> dict[str, Any]:
    """What every PyTorch runtime reports: torch's version, its device and its threads."""
    return {"version": torch.__version__, "device": str(device), "threads": threads or torch.get_num_threads()}


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError(f"device {device} needs a CUDA GPU; none is visible")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device} is not supported; use cpu or cuda[:N]")
    return device


def load_eager_model(spec: ExportSpec) -> nn.Module:
    """Rebuild the exported classifier in eager PyTorch (eval mode, CPU, float32).

    From its ModelConfig + model.safetensors (+ the recorded shape attributes of a pruned
    model) when the export recorded a config, as a checkpoint is loaded
    (:func:`mmfurnace.models.weights.rebuild_model`); else from the pickled module (model.pt)
    written next to the weights.
    """
    entry = spec.model
    config = entry.get("config")
    if config is not None:
        from mmfurnace.models import ModelConfig
        from mmfurnace.models.weights import rebuild_model

        weights = spec.checked_path(entry.get("weights", "model.safetensors"))
        model = rebuild_model(ModelConfig.model_validate(config), spec.info, weights,
                              modalities=spec.modalities,
                              shape_attributes=entry.get("shape_attributes")).float()
    elif entry.get("pickled"):
        path = spec.checked_path(entry["pickled"])
        # Our own export, hash-checked above: unpickling the module is what it was saved for.
        model = torch.load(path, map_location="cpu", weights_only=False)
    else:
        raise InputError(
            f"{spec.directory}: export has neither a model config nor a pickled model for eager runtimes"
        )
    return model.eval()


def graph_module(spec: ExportSpec, graph_name: str, model: nn.Module | None) -> nn.Module:
    model = load_eager_model(spec) if model is None else model.eval()
    sequences = [m for m in spec.modalities if spec.is_sequence(m)]
    return wrap_graph(model, spec.graph(graph_name), spec.modalities, sequences).eval()


def to_tensors(
    feed: dict[str, np.ndarray],
    names: list[str],
    device: torch.device,
    float_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    out = []
    for name in names:
        t = torch.from_numpy(feed[name]).to(device)
        if float_dtype is not None and t.is_floating_point():
            t = t.to(float_dtype)
        out.append(t)
    return out


def outputs_to_numpy(out: Any) -> list[np.ndarray]:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    result = []
    for o in outs:
        if o.is_floating_point() and o.dtype != torch.float32:
            o = o.float()
        result.append(o.detach().cpu().numpy())
    return result
