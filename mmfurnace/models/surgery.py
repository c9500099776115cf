"""Changing layer widths in place: slicing channels out of layers (what structured pruning does)
and the inverse for loading, resizing a freshly built model to the shapes of saved weights.

A channel-pruned model has layers narrower than its config builds. What rebuilds it is the
config, the weights' shapes and the few plain attributes pruning changed (:func:`shape_attributes`:
``out_dim``, the fusion's ``dims``); :func:`resize_to_` applies both to a model built from the
config, after which the weights load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def slice_linear_(layer: nn.Linear, *, out: Tensor | None = None, inp: Tensor | None = None) -> None:
    """Keep output rows ``out`` and input columns ``inp`` (index tensors) of ``layer``."""
    w = layer.weight.detach()
    if out is not None:
        w = w[out]
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.detach()[out].clone())
        layer.out_features = len(out)
    if inp is not None:
        w = w[:, inp]
        layer.in_features = len(inp)
    layer.weight = nn.Parameter(w.clone())


def slice_norm_(norm: nn.LayerNorm, keep: Tensor) -> None:
    """Keep channels ``keep`` of a LayerNorm."""
    if norm.weight is not None:
        norm.weight = nn.Parameter(norm.weight.detach()[keep].clone())
    if norm.bias is not None:
        norm.bias = nn.Parameter(norm.bias.detach()[keep].clone())
    norm.normalized_shape = (len(keep),)


def slice_param_(module: nn.Module, name: str, keep: Tensor, dim: int) -> None:
    """Keep indices ``keep`` along ``dim`` of the parameter ``module.<name>``."""
    value = getattr(module, name).detach()
    setattr(module, name, nn.Parameter(value.index_select(dim, keep).clone()))


def shape_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The non-tensor attributes pruning changes (``out_dim``, ``dims``), by module name; with
    the weights' shapes they rebuild the pruned model (:func:`resize_to_`)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs: dict[str, Any] = {}
        if isinstance(getattr(module, "out_dim", None), int):
            attrs["out_dim"] = module.out_dim
        if isinstance(getattr(module, "dims", None), dict):
            attrs["dims"] = dict(module.dims)
        if attrs:
            out[name] = attrs
    return out


def resize_to_(
    model: nn.Module,
    shapes: Mapping[str, Sequence[int] | Tensor],
    attributes: Mapping[str, Mapping[str, Any]] | None = None,
) -> nn.Module:
    """Reshape a freshly built model's parameters to ``shapes`` (parameter name -> shape, or a
    pruned model's state dict) and restore ``attributes`` (from :func:`shape_attributes`); then
    the weights load strictly. A parameter whose shape already matches is left as it is.
    Returns the model."""
    attributes = attributes or {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, param in list(module.named_parameters(recurse=False)):
            shape = shapes.get(prefix + pname)
            shape = shape.shape if isinstance(shape, Tensor) else shape
            if shape is not None and tuple(shape) != tuple(param.shape):
                setattr(module, pname, nn.Parameter(torch.empty(tuple(shape), dtype=param.dtype)))
        _sync_layer_sizes(module)
        for attr, value in attributes.get(name, {}).items():
            setattr(module, attr, value)
    return model


def _sync_layer_sizes(module: nn.Module) -> None:
    """Make a torch layer's size attributes agree with its (resized) parameters."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        # Torch-Pruning prunes a depthwise conv's groups along with its channels
        depthwise = module.groups > 1 and module.groups == module.out_channels
        module.out_channels = module.weight.shape[0]
        if depthwise:
            module.groups = module.out_channels
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = (module.weight.shape[0],)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
        module.embed_dim = module.kdim = module.vdim = module.in_proj_weight.shape[1]
        module.head_dim = module.in_proj_weight.shape[0] // 3 // module.num_heads
