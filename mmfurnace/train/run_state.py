"""What a training run carries across epochs and restarts: its progress (:class:`TrainState`),
saved into and restored from checkpoints, and the results.json written at its end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmfurnace.errors import ConfigError
from mmfurnace.train.checkpoint import (
    capture_rng_states,
    load_checkpoint,
    load_weights,
    restore_rng_states,
    save_checkpoint,
)
from mmfurnace.train.distributed import DistEnv

if TYPE_CHECKING:
    from mmfurnace.config import RunConfig


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides weights and optimiser."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    stopped_early: bool = False
    train_time_s: float = 0.0
    samples_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def save_state(directory: Path, state: TrainState, ckpt: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A checkpoint of ``ckpt`` (model, optimizer, scheduler, scaler, config, info) with ``state``,
    the RNG states and ``metrics``, in ``directory``."""
    extra = {k: v for k, v in asdict(state).items() if k not in ("epoch", "step", "best_metric", "bad_epochs")}
    save_checkpoint(
        directory,
        epoch=state.epoch,
        step=state.step,
        rng_states=capture_rng_states(),
        metrics=drop_empty(metrics),
        best_metric=state.best_metric,
        bad_epochs=state.bad_epochs,
        extra=extra,
        **ckpt,
    )


def restore_state(
    directory: Path,
    cfg: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Load weights, optimiser, schedule, scaler and RNG from ``directory``; return the progress."""
    ckpt = load_checkpoint(directory)
    saved_model = ckpt.config.get("model")
    if saved_model != cfg.model.model_dump(mode="json"):
        raise ConfigError(
            f"--resume: the model config differs from the one {ckpt.path} was trained with; "
            f"saved: {saved_model}"
        )
    load_weights(model, ckpt.path)
    optimizer.load_state_dict(ckpt.state["optimizer"])
    scheduler.load_state_dict(ckpt.state["scheduler"])
    scaler.load_state_dict(ckpt.state["scaler"])
    restore_rng_states(ckpt.state["rng"])
    extra = ckpt.state["extra"]
    return TrainState(
        epoch=ckpt.epoch,
        step=ckpt.step,
        best_metric=ckpt.state["best_metric"],
        bad_epochs=ckpt.state["bad_epochs"],
        **extra,
    )


def run_results(
    cfg: RunConfig,
    state: TrainState,
    test: dict[str, Any] | None,
    model: nn.Module,
    env: DistEnv,
    device: torch.device,
) -> dict[str, Any]:
    """What results.json holds at the end of a run."""
    best_val = next((h["val"] for h in state.history if h["epoch"] == state.best_epoch), None)
    return {
        "test": drop_empty(test) if test is not None else None,
        "best_epoch": state.best_epoch,
        "best_valid": best_val,
        "monitor": cfg.train.monitor,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "params": count_params(model),
        "trainable_params": count_params(model, trainable=True),
        "train_time_s": state.train_time_s,
        "train_samples_per_s": state.samples_seen / state.train_time_s if state.train_time_s else None,
        "world_size": env.world_size,
        "device": str(device),
        "precision": cfg.train.precision,
        "config": cfg.model_dump(mode="json"),
    }


def count_params(model: nn.Module, *, trainable: bool = False) -> int:
    """Every parameter of ``model``, trainable or frozen (``trainable``: only those that train)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def drop_empty(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics`` without the entries that are None or empty dicts."""
    return {k: v for k, v in (metrics or {}).items() if v is not None and v != {}}
