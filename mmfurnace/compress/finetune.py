"""A short fine-tune loop after a lossy compression step (pruning, QAT, distillation).

The loop is written out (torchtune-style recipe, no Trainer): AdamW, cosine decay, and each
step is the training recipe's own :func:`~mmfurnace.train.recipe.train_step` (FP32, no
modality dropout) with the training loss of :mod:`mmfurnace.train.losses` (task + alpha *
consistency + beta * regulariser) or the caller's ``loss_fn`` (distillation passes its own).
``on_step`` is called after every optimiser step, so QAT can freeze its observers and pruning
can hold its masks. Runs on the CPU by default; seeds nothing (the caller owns the RNG).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mmfurnace.compress.config import FinetuneConfig
from mmfurnace.data.batch import Batch
from mmfurnace.train.config import TrainConfig
from mmfurnace.train.losses import LossFn, LossParts
from mmfurnace.train.losses import training_loss as training_loss  # the loss callers pass here
from mmfurnace.train.precision import make_scaler
from mmfurnace.train.schedule import build_optimizer, warmup_cosine
from mmfurnace.train.step import train_step


def finetune(
    model: nn.Module,
    loader: Iterable[Batch],
    config: FinetuneConfig,
    *,
    loss_fn: LossFn,
    device: torch.device | str = "cpu",
    params: Iterable[nn.Parameter] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    clip_grad_norm: float | None = 1.0,
    select_on: Callable[[nn.Module], float] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``config.epochs`` passes over ``loader`` (capped at
    ``config.max_steps`` steps). ``loss_fn(output, batch, present)``: e.g.
    :func:`training_loss` or a DistillLoss. ``params``: what to optimise (default: the
    model's, plus whatever ``loss_fn`` owns is the caller's to pass). ``on_step(step, total_steps)`` runs
    after each optimiser step. ``select_on(model) -> score`` (higher is better, e.g. validation
    accuracy) runs after each epoch, and the model ends with the weights of its best epoch, as
    training keeps its best checkpoint. Returns one record per epoch: {"epoch", "loss",
    "steps"} (+ "score"). The model is left in eval mode.
    """
    if config.epochs == 0:
        return []
    steps_per_epoch = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    total = config.epochs * steps_per_epoch if steps_per_epoch else (config.max_steps or 1)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    holder = nn.Module()
    holder.params = nn.ParameterList(list(params) if params is not None else list(model.parameters()))
    optimizer = build_optimizer(holder, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_steps=0, total_steps=max(total, 1))
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    # the recipe's step in FP32, without modality dropout (as the fine-tunes always ran)
    tc = TrainConfig(precision="fp32", modality_dropout={}, clip_grad_norm=clip_grad_norm)
    scaler = make_scaler(tc.precision, torch.device(device))  # disabled: FP32 needs no scaling
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Tensor]] | None = None
    step = 0
    model.train()
    try:
        for epoch in range(config.epochs):
            loss_sum, rows = 0.0, 0
            for batch in loader:
                if step >= total:
                    break
                batch = batch.to(device)
                parts = train_step(model, batch, tc=tc, optimizer=optimizer, scaler=scaler, scheduler=scheduler,
                                   device=device, loss_fn=loss_fn, params=trainable)
                loss = parts.total if isinstance(parts, LossParts) else parts
                step += 1
                if on_step is not None:
                    on_step(step, total)
                loss_sum += float(loss.detach()) * len(batch)
                rows += len(batch)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(rows, 1), "steps": step})
            if select_on is not None:
                score = float(select_on(model))
                model.train()
                history[-1]["score"] = score
                if best is None or score > best[0]:
                    best = (score, copy.deepcopy(model.state_dict()))
            if step >= total:
                break
    finally:
        model.eval()
    if best is not None:
        model.load_state_dict(best[1])
    return history
