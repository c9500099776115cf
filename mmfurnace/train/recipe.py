"""The training recipe: one readable loop that wires the components together.

    python -m mmfurnace.train.recipe configs/digits.yaml train.epochs=3 [--resume]
    torchrun --nproc_per_node 2 -m mmfurnace.train.recipe configs/digits.yaml

What it does, in order: seed once; pick the device; build the train/valid/test datasets and
loaders (a DistributedSampler seeded from (seed, epoch), so epoch k has the same order
whether or not the run was resumed); build the model; AdamW + warmup/cosine; then per
epoch: :func:`train_step` (modality dropout -> forward under autocast -> task +
alpha*consistency + beta*regulariser -> backward (GradScaler for fp16) -> clip -> step);
validate; save ``best/`` when the monitored metric improved and ``last/`` every epoch; stop early when it has not
improved for ``early_stopping_patience`` epochs. Finally the best checkpoint is evaluated on
the test split and ``results.json`` is written. Rank 0 alone logs, saves and evaluates.

Run directory (``train.out_dir``): ``last/``, ``best/`` (checkpoints), ``metrics.jsonl``,
``tb/`` (TensorBoard), ``results.json``.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from mmfurnace.data.batch import Batch
from mmfurnace.data.datasets import build_dataset
from mmfurnace.data.loader import make_loader
from mmfurnace.data.subset import restrict_modalities
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.io import write_json_atomic
from mmfurnace.models import build_model
from mmfurnace.models.feature_cache import FeatureCache, cache_features, feature_progress
from mmfurnace.threads import torch_threads
from mmfurnace.train.checkpoint import (
    capture_rng_states,
    is_checkpoint,
    load_checkpoint,
    load_encoder_weights,
    load_weights,
    restore_rng_states,
    save_checkpoint,
)
from mmfurnace.train.config import TrainConfig
from mmfurnace.train.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    broadcast_from_main,
    cleanup,
    init_distributed,
    read_env,
    resolve_device,
    sync_buffers,
    wrap_model,
)
from mmfurnace.train.evaluate import evaluate
from mmfurnace.train.logging import ProgressBar, RunLogger
from mmfurnace.train.losses import LossFn, LossParts, drop_modalities, training_loss
from mmfurnace.train.precision import autocast, check_precision, make_scaler
from mmfurnace.train.schedule import build_optimizer, warmup_cosine, warmup_steps_for

if TYPE_CHECKING:
    from mmfurnace.config import RunConfig

SPLITS = ("train", "valid", "test")
Stage = Callable[[str], AbstractContextManager[None]]  # stage(name) -> a timed region


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    out_dir:      the run directory.
    best_metrics: validation metrics of the best epoch (plus ``epoch``).
    history:      one record per epoch (train losses, lr, validation metrics, time).
    test_metrics: :func:`~mmfurnace.train.evaluate.evaluate` of ``best/`` on the test split
                  (None on ranks other than 0, or without a test split).
    model:        the trained model as it is after the last epoch (unwrapped from DDP).
    """

    out_dir: Path
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None
    model: nn.Module


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


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    datasets: dict[str, Dataset] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` as ``cfg.train`` says; see the module docstring.

    resume:   continue exactly from ``<out_dir>/last`` (same weights, optimiser, schedule, RNG,
              data order); without it an ``out_dir`` that already holds a run is refused.
    progress: show a progress bar (rank 0 only).
    datasets: pre-built datasets by split ("train", "valid" required, "test" optional) instead
              of building them from ``cfg.data``; each yields Samples and has ``.info``, and
              is seen with only the modalities in ``cfg.data.modalities``.
              Used by tests and by callers that hold their data in memory.
    """
    env = read_env()
    device = resolve_device(cfg.train.device, env)
    check_precision(cfg.train.precision, device)
    _check_out_dir(Path(cfg.train.out_dir), resume)
    env = init_distributed(env, device)
    try:
        with torch_threads(cfg.train.threads):
            return _train(cfg, env, device, resume=resume, progress=progress, datasets=datasets)
    finally:
        cleanup(env)


def _train(
    cfg: RunConfig,
    env: DistEnv,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
    datasets: dict[str, Dataset] | None,
) -> TrainResult:
    tc = cfg.train
    out_dir = Path(tc.out_dir)
    _seed_everything(tc.seed)

    # --- data -------------------------------------------------------------------------------
    splits = datasets if datasets is not None else {s: build_dataset(cfg.data, s) for s in SPLITS}
    _check_splits(splits)
    splits = restrict_modalities(splits, cfg.data.modalities)
    info = splits["train"].info
    modalities = list(info.modalities)  # what the dataset has of cfg.data.modalities
    _check_modality_dropout(tc.modality_dropout, modalities)
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else device.type == "cuda"

    # --- model; frozen encoders' outputs computed once (``net`` trains, ``model`` is saved) --
    model = build_model(cfg.model, info, modalities=modalities).to(device)
    _init_encoders(model, tc.init_encoders, modalities)
    model.set_grad_checkpointing(tc.grad_checkpointing)  # encoders (and attention fusion)
    features = _feature_cache(cfg, model, splits, env, device, progress=progress)
    splits, net = features.datasets(splits), features.view(model)

    sampler = DistributedSampler(
        splits["train"], num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=tc.seed
    )
    # A 1-row last batch breaks batch-norm and is a noisy step: drop it (and only it).
    drop_last = len(sampler) > cfg.data.batch_size and len(sampler) % cfg.data.batch_size == 1
    train_loader = _loader(cfg, splits["train"], modalities, pin, sampler=sampler, drop_last=drop_last)
    valid_loader = _loader(cfg, splits["valid"], modalities, pin)

    # --- optimiser, schedule, precision ------------------------------------------------------
    steps_per_epoch = len(train_loader)
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(
        optimizer,
        warmup_steps=warmup_steps_for(tc.warmup_epochs, steps_per_epoch=steps_per_epoch,
                                      epochs=tc.epochs),
        total_steps=tc.epochs * steps_per_epoch,
    )
    scaler = make_scaler(tc.precision, device)

    state = TrainState()
    if resume:
        state = _restore(out_dir / "last", cfg, model, optimizer, scheduler, scaler)
    ddp_model = wrap_model(net, device, env)
    logger = RunLogger(out_dir, enabled=env.is_main, resume_step=state.step if resume else None)
    if env.is_main and not resume:
        logger.log("start", epoch=0, step=0, params=_count_params(model), device=str(device),
                   world_size=env.world_size, steps_per_epoch=steps_per_epoch,
                   feature_cache=features.stats)

    # --- the loop ----------------------------------------------------------------------------
    first_epoch = tc.epochs if state.stopped_early else state.epoch
    bar = ProgressBar(enabled=progress and env.is_main, epochs=tc.epochs,
                      steps_per_epoch=steps_per_epoch, start_epoch=state.epoch)
    with logger, bar:
        for epoch in range(first_epoch, tc.epochs):
            sampler.set_epoch(epoch)  # the order of epoch k depends on (seed, k) only
            train_loader.generator.manual_seed(_epoch_seed(tc.seed, epoch, env.rank))  # worker seeds
            dropout_rng = torch.Generator().manual_seed(_epoch_seed(tc.seed, epoch, env.rank))
            ddp_model.train()
            bar.start_epoch(epoch)
            loss_sums = torch.zeros(4, dtype=torch.float64, device=device)
            rows = 0
            started = time.perf_counter()
            for batch in train_loader:
                batch = batch.to(device, non_blocking=pin)
                parts = train_step(ddp_model, batch, tc=tc, multilabel=info.multilabel,
                                   optimizer=optimizer, scaler=scaler, scheduler=scheduler,
                                   dropout_rng=dropout_rng, device=device)
                state.step += 1
                rows += len(batch)
                loss_sums += torch.stack([p.detach().double() for p in parts]) * len(batch)
                bar.step()
                if state.step % tc.log_every == 0:
                    losses = _loss_dict(parts)
                    bar.status(f"loss {losses['total']:.4f}")
                    logger.log("step", epoch=epoch + 1, step=state.step,
                               lr=scheduler.get_last_lr()[0], **losses)
            epoch_time = time.perf_counter() - started
            state.train_time_s += epoch_time
            state.samples_seen += rows * env.world_size

            # --- validate, decide, save --------------------------------------------------
            sync_buffers(ddp_model, env)
            train_losses = {
                name: all_reduce_mean(float(value) / max(rows, 1), env, device)
                for name, value in zip(LossParts._fields, loss_sums, strict=False)
            }
            val = None
            if env.is_main:
                val = evaluate(net, valid_loader, device, modalities=modalities,
                               per_modality=False, precision=tc.precision)
            val = broadcast_from_main(val, env)  # every rank takes rank 0's decisions
            state.epoch = epoch + 1
            improved = _improved(val[tc.monitor], state.best_metric, lower_is_better=tc.monitor == "loss")
            if improved:
                state.best_metric, state.best_epoch, state.bad_epochs = val[tc.monitor], epoch + 1, 0
            else:
                state.bad_epochs += 1
            patience = tc.early_stopping_patience
            state.stopped_early = (
                patience is not None and state.bad_epochs >= patience and state.epoch < tc.epochs
            )
            record = {"epoch": epoch + 1, "step": state.step, "lr": scheduler.get_last_lr()[0],
                      "train": train_losses, "val": _drop_empty(val), "improved": improved,
                      "epoch_time_s": epoch_time, "samples_per_s": rows * env.world_size / epoch_time}
            state.history.append(record)
            logger.log("epoch", **record)
            if env.is_main:
                ckpt = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            config=cfg.model_dump(mode="json"), info=info)
                if improved:
                    _save(out_dir / "best", state, ckpt, val)
                _save(out_dir / "last", state, ckpt, val)  # last: a crash after it loses nothing
            barrier(env)
            bar.end_epoch(f"val {tc.monitor} {val[tc.monitor]:.4f}")
            if state.stopped_early:
                break

        # --- test the best checkpoint ----------------------------------------------------
        test_metrics = None
        if env.is_main and "test" in splits:
            best_model = build_model(cfg.model, info, modalities=modalities).to(device)
            load_weights(best_model, out_dir / "best")
            test_loader = _loader(cfg, splits["test"], modalities, pin)
            test_metrics = evaluate(features.view(best_model), test_loader, device,
                                    modalities=modalities, precision=tc.precision)
            logger.log("test", epoch=state.best_epoch, step=state.step, **_drop_empty(test_metrics))
        if env.is_main:
            write_json_atomic(out_dir / "results.json",
                              _results(cfg, state, test_metrics, model, env, device))
        barrier(env)

    best = next((dict(h["val"], epoch=h["epoch"]) for h in state.history if h["epoch"] == state.best_epoch), {})
    return TrainResult(out_dir, best, state.history, test_metrics, model)


# --- the pieces the loop calls -----------------------------------------------------------------


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
    replaces the recipe's loss (:func:`mmfurnace.train.losses.training_loss` of
    ``multilabel`` and ``tc``'s weights), e.g. a distillation loss; it returns LossParts or a
    scalar. ``params``: what to clip (default: the model's). ``stage``: ``stage(name)`` gives
    a context manager around the "loss", "backward" and "optimizer" parts, for a profiler to
    time them (it times the encoders and the fusion through module hooks). Returns what the
    loss returned (attached to the graph).
    """
    if loss_fn is None:
        assert multilabel is not None, "the recipe's loss needs multilabel"
        loss_fn = training_loss(multilabel=multilabel, alpha=tc.alpha, beta=tc.beta,
                                consistency=tc.consistency, temperature=tc.temperature)
    timed = stage or _untimed
    present = batch.present
    if tc.modality_dropout:
        assert dropout_rng is not None, "modality dropout draws from dropout_rng"
        present = drop_modalities(batch.present, tc.modality_dropout, dropout_rng)
    with autocast(device, tc.precision):
        out = model(batch.inputs, present, batch.padding)
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


def _init_encoders(model: nn.Module, sources: dict[str, Path], modalities: list[str]) -> None:
    """Warm-start encoders from other runs' checkpoints (before a resume overwrites them)."""
    unused = sorted(set(sources) - set(modalities))
    if unused:
        raise ConfigError(
            f"train.init_encoders names {unused}, which this run does not use ({modalities})"
        )
    for modality, directory in sources.items():
        try:
            load_encoder_weights(model, modality, directory)
        except InputError as err:
            raise ConfigError(f"train.init_encoders.{modality}: {err}") from None


def _feature_cache(
    cfg: RunConfig, model: nn.Module, splits: dict[str, Dataset], env: DistEnv,
    device: torch.device, *, progress: bool,
) -> FeatureCache:
    """The cache entries of the wholly frozen encoders (models/feature_cache.py): rank 0 finds
    or builds them, the other ranks then read them."""
    if not cfg.train.feature_cache:
        return FeatureCache()
    kwargs: dict[str, Any] = dict(cache_dir=cfg.train.feature_cache_dir, device=device,
                                  batch_size=cfg.data.batch_size)
    cache = None
    if env.is_main:
        # A backbone's forward is large enough to use every core, unlike the small training
        # steps that train.threads is tuned for.
        threads = cfg.train.feature_threads or os.cpu_count()
        with torch_threads(threads), feature_progress(progress) as report:
            cache = cache_features(model, splits, progress=report, **kwargs)
    barrier(env)
    return cache if cache is not None else cache_features(model, splits, build=False, **kwargs)


def _loader(cfg: RunConfig, dataset: Dataset, modalities: list[str], pin: bool, **kwargs: Any):
    return make_loader(
        dataset,
        modalities=modalities,
        batch_size=cfg.data.batch_size,
        shuffle=False,  # training order comes from the sampler; evaluation keeps file order
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=pin,
        seed=cfg.train.seed,
        **kwargs,
    )


def _save(directory: Path, state: TrainState, ckpt: dict[str, Any], metrics: dict[str, Any]) -> None:
    extra = {k: v for k, v in asdict(state).items() if k not in ("epoch", "step", "best_metric", "bad_epochs")}
    save_checkpoint(
        directory,
        epoch=state.epoch,
        step=state.step,
        rng_states=capture_rng_states(),
        metrics=_drop_empty(metrics),
        best_metric=state.best_metric,
        bad_epochs=state.bad_epochs,
        extra=extra,
        **ckpt,
    )


def _restore(
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


def _results(
    cfg: RunConfig,
    state: TrainState,
    test: dict[str, Any] | None,
    model: nn.Module,
    env: DistEnv,
    device: torch.device,
) -> dict[str, Any]:
    best_val = next((h["val"] for h in state.history if h["epoch"] == state.best_epoch), None)
    return {
        "test": _drop_empty(test) if test is not None else None,
        "best_epoch": state.best_epoch,
        "best_valid": best_val,
        "monitor": cfg.train.monitor,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "params": _count_params(model),
        "train_time_s": state.train_time_s,
        "train_samples_per_s": state.samples_seen / state.train_time_s if state.train_time_s else None,
        "world_size": env.world_size,
        "device": str(device),
        "precision": cfg.train.precision,
        "config": cfg.model_dump(mode="json"),
    }


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    last = out_dir / "last"
    if resume and not is_checkpoint(last):
        raise InputError(f"--resume: no checkpoint to resume from at {last}")
    if not resume and is_checkpoint(last):
        raise InputError(
            f"{out_dir} already holds a run (checkpoint {last}); pass --resume to continue it "
            "or choose another train.out_dir"
        )


def _check_splits(splits: dict[str, Dataset]) -> None:
    missing = [s for s in ("train", "valid") if s not in splits]
    if missing:
        raise InputError(f"datasets: missing split(s) {', '.join(missing)}")
    for name, dataset in splits.items():
        if len(dataset) == 0:
            raise InputError(f"the {name} split is empty")
        if not hasattr(dataset, "info"):
            raise InputError(f"the {name} dataset has no .info (DatasetInfo)")


def _check_modality_dropout(probs: dict[str, float], modalities: list[str]) -> None:
    unknown = sorted(set(probs) - set(modalities))
    if unknown:
        raise ConfigError(
            f"train.modality_dropout: {', '.join(unknown)} not among the dataset's modalities "
            f"({', '.join(modalities)})"
        )


def _improved(value: float, best: float | None, *, lower_is_better: bool) -> bool:
    if best is None:
        return True
    return value < best if lower_is_better else value > best


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed for one (run seed, epoch, rank): resuming at epoch k redraws exactly epoch k."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63


def _loss_dict(parts: LossParts) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in zip(LossParts._fields, parts, strict=False)}


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _drop_empty(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if v is not None and v != {}}


if __name__ == "__main__":  # python -m mmfurnace.train.recipe ... (torchrun -m works too)
    from mmfurnace.train.__main__ import main

    sys.exit(main())
