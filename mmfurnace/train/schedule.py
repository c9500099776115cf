"""Optimiser and learning-rate schedule: AdamW, linear warmup, cosine decay, stepped per batch."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, encoder_lr: float | None = None
) -> AdamW:
    """AdamW; biases and normalisation weights (tensors with < 2 dims) get no weight decay.

    encoder_lr: the learning rate of the trainable parameters of ``model.encoders`` (the top
    blocks ``unfreeze_top`` fine-tunes), when it differs from ``lr``; None: ``lr`` for all.
    A pretrained block fine-tuned at the fusion's rate forgets what it knew within epochs."""
    encoder_params: set[int] = set()
    encoders = getattr(model, "encoders", None)
    if encoder_lr is not None and isinstance(encoders, nn.Module):
        encoder_params = {id(p) for p in encoders.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in encoder_params, param.ndim >= 2), []).append(param)
    # without encoder_lr the groups are [decay, no_decay], as checkpoints of earlier runs hold
    order = [(False, True), (False, False), (True, True), (True, False)]
    return AdamW(
        [{"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0,
          "lr": encoder_lr if key[0] else lr} for key in order if key in groups],
        lr=lr,
    )


AUTO_WARMUP_SHARE = 0.1  # of the run's steps, when warmup is not set; at most one epoch


def warmup_steps_for(warmup_epochs: float | None, *, steps_per_epoch: int, epochs: int) -> int:
    """Warmup length in optimiser steps: ``warmup_epochs`` epochs, or (None) a tenth of the
    run capped at one epoch. A fixed one-epoch default spent a whole 1-epoch run ramping up
    and never decayed; a tenth keeps long runs at one epoch and short ones mostly decaying."""
    if warmup_epochs is not None:
        return round(warmup_epochs * steps_per_epoch)
    return min(steps_per_epoch, round(AUTO_WARMUP_SHARE * epochs * steps_per_epoch))


def warmup_cosine_factor(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """LR multiplier for optimiser step ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the first
    step already learns and the last warmup step runs at the full rate. Then cosine from 1 to
    ``min_ratio`` over the remaining steps; flat at ``min_ratio`` past ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> LambdaLR:
    """A LambdaLR applying :func:`warmup_cosine_factor`; call ``.step()`` after every batch."""
    assert warmup_steps >= 0, warmup_steps
    assert total_steps > 0, total_steps

    def factor(step: int) -> float:
        return warmup_cosine_factor(
            step, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio
        )

    return LambdaLR(optimizer, factor)
