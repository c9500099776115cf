"""Pruning: unstructured magnitude pruning, and structured channel pruning that keeps every
encoder's output width in step with the fusion that consumes it.

``prune_(model, MagnitudeConfig(...))`` / ``prune_(model, ChannelConfig(...), example=batch)``
prune in place (the fine-tune is the caller's: see :mod:`mmfurnace.compress.api`).

Unstructured (torch.nn.utils.prune, L1 magnitude, global or per layer): zeros individual
weights. The masks stay attached (as forward pre-hooks) during fine-tuning so pruned weights
stay 0, then :func:`make_permanent_` writes them in. Note: this makes the model *smaller when
compressed* but not *faster*: dense GEMM/conv kernels (MKL-DNN, MLAS, cuBLAS) multiply zeros
at the same speed as any other number; a speed-up needs sparse kernels and, on CPUs, far
higher sparsity than 50-90% or 2:4-style structure that CPU kernels do not exploit.

Structured (channels): removes whole conv filters, hidden units, embedding width and
attention head width, so every layer after is smaller and dense kernels run faster.
Structured pruning lives in :mod:`mmfurnace.compress.channels`:
- Torch-Pruning's DependencyGraph prunes the CNN/MLP encoders (lenet, cnn1d, cnn2d, resnet,
  mlp): it follows conv -> ChannelNorm -> pool chains and reports which output channels of
  the encoder it removed.
- Hand-written, because Torch-Pruning does not trace them correctly: (1) the encoder output
  -> fusion input coupling (dict inputs, concatenation of modality slots plus a presence
  indicator, outer products, token concatenation along the sequence axis): each fusion's
  input projection and the consistency projection of that modality lose the same input
  columns; (2) the residual width and per-head width of transformer blocks (text encoder,
  cross-attention fusion), which Torch-Pruning leaves alone; (3) each fusion's hidden width
  and the classification head's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.nn.utils import prune as torch_prune

from mmfurnace.compress.channels import channel_prune_
from mmfurnace.compress.config import ChannelConfig, MagnitudeConfig
from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError

FilterFn = Callable[[nn.Module, str], bool]


def prune_(model: nn.Module, config: MagnitudeConfig | ChannelConfig, *, example: Batch | None = None,
           filter_fn: FilterFn | None = None, ratio: float | None = None) -> dict[str, Any]:
    """Prune ``model`` in place. MagnitudeConfig: attach L1 masks (see :func:`magnitude_prune_`;
    call :func:`make_permanent_` after fine-tuning). ChannelConfig: remove ``ratio`` (default
    ``config.sparsity``) of the channels of every layer group in one step; needs ``example``
    (a real batch to trace the encoders with). ``config.iterative_steps`` and the fine-tunes
    between steps are run by ``compress(..., "prune-channel")``, which calls this once per
    step with the step's ratio. Returns a summary dict."""
    if isinstance(config, MagnitudeConfig):
        targets = magnitude_prune_(model, config, filter_fn=filter_fn)
        return {"layers": len(targets), "sparsity": weight_sparsity(targets)}
    if isinstance(config, ChannelConfig):
        if example is None:
            raise ConfigError("ChannelConfig: structured pruning needs an example batch to trace the encoders")
        return channel_prune_(model, config, example=example, ratio=ratio)
    raise ConfigError(f"prune_ does not take {type(config).__name__}")


# --- unstructured --------------------------------------------------------------------------------


def prunable_weights(model: nn.Module, filter_fn: FilterFn | None = None) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every Conv/Linear weight and attention in_proj weight on the
    logits path (the consistency projections are left out)."""
    out: list[tuple[nn.Module, str]] = []
    for name, module in model.named_modules():
        if name.startswith("projections"):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
            out.append((module, "in_proj_weight"))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out.append((module, "weight"))
    return out


def magnitude_prune_(model: nn.Module, config: MagnitudeConfig, *, filter_fn: FilterFn | None = None
                     ) -> list[tuple[nn.Module, str]]:
    """Attach L1-magnitude masks (global threshold or per layer) and return the pruned weights."""
    targets = prunable_weights(model, filter_fn)
    if not targets:
        raise ConfigError("MagnitudeConfig: no Conv/Linear weight to prune")
    if config.scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=config.sparsity)
    else:
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=config.sparsity)
    for mha in (m for m in model.modules() if isinstance(m, nn.MultiheadAttention)):
        if torch_prune.is_pruned(mha.out_proj):
            # MHA reads out_proj.weight without calling out_proj, so out_proj's own mask hook
            # never runs: recompute the masked weight whenever the attention module runs.
            mha.register_forward_pre_hook(_refresh_out_proj)
    return targets


def _refresh_out_proj(mha: nn.Module, args: tuple) -> None:
    for hook in mha.out_proj._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            hook(mha.out_proj, args)


def make_permanent_(model: nn.Module) -> None:
    """Write the masks into the weights and drop the pruning hooks and buffers."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
            elif hook is _refresh_out_proj:
                del module._forward_pre_hooks[key]


def weight_sparsity(targets: Iterable[tuple[nn.Module, str]]) -> float:
    """Share of exactly-zero entries over the given weights."""
    zeros = total = 0
    for module, name in targets:
        w = getattr(module, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)
