"""Small pieces shared by encoders and fusions (timm's ``layers/``): masks, norms, checkpointing.

Everything here is per row and per position, so a padded frame or an absent row can never
leak into another row's result (no batch statistics anywhere).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmfurnace.errors import InputError
from mmfurnace.models.outputs import EncoderOutput


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (batch, channels, *positions), per position (timm's
    LayerNorm2d). Unlike BatchNorm/GroupNorm it never mixes rows or positions, so padding and
    absent rows cannot change the features of real ones."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] <= 8:
            # Narrow image-like maps: reduce over axis 1 in place of permute + layer_norm (the
            # same numbers to 2e-6). A layer norm over a last axis of a few channels at
            # hundreds of positions is per-row overhead: ONNX Runtime ran (32, 4, 28, 28) 4.3x
            # faster this way. Wider maps keep the layer norm: there the gain was small in
            # FP32, and in INT8 graphs the extra ops pushed the pools out of ORT's quantized
            # NHWC path (static INT8 of the demo model fell from 1.34x to 1.11x over FP32).
            # Sequences (batch, channels, frames) keep it too: it was faster for them.
            mean = x.mean(1, keepdim=True)
            centred = x - mean
            scale = torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
            return centred * scale * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        # explicit non-negative permutations: the ONNX exporter writes movedim(-1, 1) as an
        # invalid Transpose perm
        last = x.dim() - 1
        x = x.permute(0, *range(2, last + 1), 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, last, *range(1, last))


class Standardize(nn.Module):
    """(x - mean) / std per feature, over the last axis, with ``mean`` and ``std`` buffers: the
    train split's statistics of an encoder's pooled output, set once by
    :func:`mmfurnace.train.feature_stats.fit_standardizers` and saved with the model, so
    evaluation, export and serving apply the same scaling. Affine, so standardising the token
    sequence and then pooling it gives the standardised pooled vector. Until fitted: identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise InputError(
                f"standardize: statistics of shape {tuple(mean.shape)} / {tuple(std.shape)} "
                f"for a {self.mean.shape[0]}-d feature"
            )
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise InputError("standardize: statistics must be finite with std > 0")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class NamedSequential(nn.Sequential):
    """nn.Sequential whose layers have names (``mlp.fc1``, ``mlp.fc2``), so code that edits a
    layer (pruning) names its role instead of counting indices. State dicts saved when the
    layers were numbered (``mlp.0.weight``) still load: numbers map to names in order."""

    def __init__(self, **layers: nn.Module) -> None:
        super().__init__(OrderedDict(layers))
        self._register_load_state_dict_pre_hook(self._rename_numbered_keys)

    def _rename_numbered_keys(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for index, name in enumerate(self._modules):
            old = f"{prefix}{index}."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[f"{prefix}{name}.{key[len(old):]}"] = state_dict.pop(key)


class MaskedInstanceNorm(nn.Module):
    """Per sample and channel: normalise a (batch, channels, frames, features) map over its
    real frames (``mask`` (batch, frames) True = real), with a learned per-channel affine.

    Why not :class:`ChannelNorm` on spectrogram maps: a LayerNorm over a handful of channels
    at each position throws away most of what those few numbers say (with 6 channels, 2 of
    their 6 degrees of freedom) and cannot remove a per-channel offset that an uncentred
    input puts in every position. A LeNet over AV-MNIST spectrograms with it stayed at
    chance; with this norm it learned like MultiBench's BatchNorm one (README, AV-MNIST).
    Unlike BatchNorm it uses no batch statistics, so other rows, padded frames and absent
    rows (all frames padding) cannot change a real row's output. A row with no real frame
    gives zeros times the scale plus the shift (finite)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or bool(mask.all()):
            # every frame real: one fused kernel (also what ONNX export sees for full inputs)
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        m = mask[:, None, :, None].to(x.dtype)
        count = (m.sum(dim=(2, 3), keepdim=True) * x.shape[3]).clamp(min=1)
        mean = (x * m).sum(dim=(2, 3), keepdim=True) / count
        var = ((x - mean) * m).pow(2).sum(dim=(2, 3), keepdim=True) / count
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def run_block(block: nn.Module, *args: Tensor | None, checkpointing: bool) -> Any:
    """Call ``block(*args)``, recomputing its activations in backward when ``checkpointing``."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x (batch, seq, dim) over positions where mask (batch, seq) is True -> (batch, dim).

    A row with no True position gives zeros. Masked values are filled, not multiplied, so a
    NaN in padding cannot reach the result."""
    if mask is None:
        return x.mean(1)
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(1)
    count = mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)
    return total / count


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax of scores (batch, n) over the entries where mask (batch, n) is True.

    Masked entries get exactly 0; a row with no True entry gets all zeros (not NaN)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1) * mask
    return weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)


def zero_absent(x: Tensor, present: Tensor) -> Tensor:
    """Zero the rows of x (batch, ...) where present (batch,) is False (fill, so grads are 0)."""
    return x.masked_fill(~present.reshape((-1,) + (1,) * (x.dim() - 1)), 0)


def halve_mask(mask: Tensor) -> Tensor:
    """A valid mask (batch, seq) after a stride-2 ceil-mode pool: a pooled slot is real if any input is."""
    return F.max_pool1d(mask.unsqueeze(1).float(), 2, ceil_mode=True).squeeze(1) > 0


def attendable(valid: Tensor) -> Tensor:
    """Key mask for attention inside an encoder: rows with no real token (absent samples) may
    attend everywhere, because a fully masked row makes softmax NaN, and NaN would reach the
    weights through backward. Those rows are masked out again downstream."""
    return valid | ~valid.any(dim=1, keepdim=True)


def check_rank(name: str, x: Tensor, ranks: Sequence[int], layout: str) -> None:
    """Raise InputError naming the encoder when x has the wrong number of axes."""
    if x.dim() not in ranks:
        raise InputError(f"encoder {name!r} expects {layout}, got shape {tuple(x.shape)}")


def pooled_inputs(
    features: dict[str, EncoderOutput],
    present: dict[str, Tensor],
    modalities: Sequence[str],
    dims: dict[str, int],
) -> tuple[list[Tensor], Tensor]:
    """The fusion's view of its inputs, in ``modalities`` order.

    Returns pooled vectors (batch, dims[m]) with absent rows zeroed, and the presence mask
    (batch, num_modalities) bool. A modality missing from ``features`` is absent in every row
    (zeros stand in); one missing from ``present`` is taken as present in every row.
    """
    if not features:
        raise InputError(f"fusion got no modality features; expected some of {list(modalities)}")
    ref = next(iter(features.values())).pooled
    batch = ref.shape[0]
    vectors: list[Tensor] = []
    masks: list[Tensor] = []
    for m in modalities:
        if m in features:
            pooled = features[m].pooled
            mask = (
                present[m].to(torch.bool)
                if m in present
                else pooled.new_ones(batch, dtype=torch.bool)
            )
            vectors.append(zero_absent(pooled, mask))
        else:
            mask = ref.new_zeros(batch, dtype=torch.bool)
            vectors.append(ref.new_zeros(batch, dims[m]))
        masks.append(mask)
    return vectors, torch.stack(masks, dim=1)
