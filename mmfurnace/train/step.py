"""The one training step: modality dropout, forward under autocast, loss, backward, clipping,
optimizer and schedule. The recipe, the compression fine-tunes and the profiler all run it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from mmfurnace.data.batch import Batch
from mmfurnace.train.config import TrainConfig
from mmfurnace.train.losses import LossFn, LossParts, drop_modalities, recipe_loss
from mmfurnace.train.precision import autocast

Stage = Callable[[str], AbstractContextManager[None]]  # stage(name) -> a timed region


def train_step(
    model: nn.Module,
    batch: Batch,
    *,
    tc: TrainConfig,
    multilabel: bool | None = None,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    scheduler: Any,
    dropout_rng: torch.Generator | None = None,
    device: torch.device | str,
    loss_fn: LossFn | None = None,
    params: list[nn.Parameter] | None = None,
    stage: Stage | None = None,
) -> Any:
    """One optimisation step on a batch already on ``device``: modality dropout, forward under
    autocast, the loss, backward (through ``scaler``: a GradScaler for fp16), clipping,
    optimizer and schedule steps, as ``tc`` says (``precision``, ``modality_dropout``, drawn
    from ``dropout_rng``, ``clip_grad_norm``, and the loss weights).

    The only training step in mmfurnace: the recipe, the compression fine-tunes and the
    profiler all run it. ``model`` may be DDP-wrapped. ``loss_fn(output, batch, present)``
    replaces the recipe's loss (:func:`mmfurnace.train.losses.recipe_loss` of ``tc``
    and ``multilabel``), e.g. a distillation loss; it returns LossParts or a
    scalar. ``params``: what to clip (default: the model's). ``stage``: ``stage(name)`` gives
    a context manager around the "loss", "backward" and "optimizer" parts, for a profiler to
    time them (it times the encoders and the fusion through module hooks). Returns what the
    loss returned (attached to the graph).
    """
    if loss_fn is None:
        assert multilabel is not None, "the recipe's loss needs multilabel"
        loss_fn = recipe_loss(tc, multilabel=multilabel)
    timed = stage or _untimed
    present = batch.present
    if tc.modality_dropout:
        assert dropout_rng is not None, "modality dropout draws from dropout_rng"
        present = drop_modalities(batch.present, tc.modality_dropout, dropout_rng)
    with autocast(device, tc.precision):
        out = model(batch.inputs, present, batch.valid)
        with timed("loss"):
            parts = loss_fn(out, batch, present)
    total = parts.total if isinstance(parts, LossParts) else parts
    with timed("backward"):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
    with timed("optimizer"):
        if tc.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params if params is not None else model.parameters(), tc.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    return parts


def _untimed(name: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()
