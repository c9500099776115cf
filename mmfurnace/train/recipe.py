"""The training recipe: one readable loop that wires the components together.

    mmfurnace train configs/digits.yaml train.epochs=3 [--resume]
    torchrun --nproc_per_node 2 -m mmfurnace.train configs/digits.yaml

(both run :func:`mmfurnace.train.command.main`; ``-m mmfurnace.train.recipe``, the old
spelling, is handed over to it before this module defines anything).

What it does, in order: seed once; pick the device; build the train/valid/test datasets and
loaders (a DistributedSampler seeded from (seed, epoch), so epoch k has the same order
whether or not the run was resumed); build the model; AdamW + warmup/cosine; then per
epoch: :func:`train_step` (modality dropout -> forward under autocast -> task +
alpha*consistency + beta*regulariser -> backward (GradScaler for fp16) -> clip -> step);
validate; save ``best/`` when the monitored metric improved and ``last/`` every epoch; stop early when it has not
improved for ``early_stopping_patience`` epochs. Finally the best checkpoint is evaluated on
the test split and ``results.json`` is written. Rank 0 alone logs, saves and evaluates.

Run directory (``train.out_dir``): ``last/``, ``best/`` (checkpoints), ``metrics.jsonl``,
``tb/`` (TensorBoard), ``results.json``, ``test_predictions.npz`` (``best/``'s logits and the
labels of every test row, in the split's order: :func:`read_test_predictions`).
"""

from __future__ import annotations

if __name__ == "__main__":  # `-m mmfurnace.train.recipe`: a second copy of this module would
    import runpy  # define a second recipe beside the imported one, so run the one entry point.

    runpy.run_module("mmfurnace.train", run_name="__main__", alter_sys=True)

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from mmfurnace.errors import InputError
from mmfurnace.io import write_atomic, write_json_atomic
from mmfurnace.models import build_model
from mmfurnace.models.feature_cache import FeatureCache
from mmfurnace.threads import torch_threads
from mmfurnace.train.checkpoint import is_checkpoint, load_weights
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
from mmfurnace.train.feature_stats import fit_standardizers
from mmfurnace.train.logging import ProgressBar, RunLogger
from mmfurnace.train.losses import LossParts
from mmfurnace.train.precision import check_precision
from mmfurnace.train.run_setup import (
    Optimisation,
    run_loader,
    setup_data,
    setup_model,
    setup_optimisation,
)
from mmfurnace.train.run_state import (
    TrainState,
    count_params,
    drop_empty,
    restore_state,
    run_results,
    save_state,
)
from mmfurnace.train.step import train_step

if TYPE_CHECKING:
    from mmfurnace.config import RunConfig
    from mmfurnace.train.config import TrainConfig



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
            result = _train(cfg, env, device, resume=resume, progress=progress, datasets=datasets)
        # every rank reaches the end before any tears its process group down: a rank that
        # destroyed it while the other still talked to it aborted once ("terminate called
        # without an active exception", SIGABRT) in CI's torchrun test on a loaded machine
        barrier(env)
        return result
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
    splits, info = setup_data(cfg, datasets)
    modalities = list(info.modalities)  # what the dataset has of cfg.data.modalities
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else device.type == "cuda"
    model, features = setup_model(cfg, info, modalities, splits, env, device, progress=progress)
    splits, net = features.datasets(splits), features.view(model)  # ``net`` trains, ``model`` is saved
    # before a resume, which restores the saved statistics
    scales = fit_standardizers(net, splits["train"], cfg, modalities, device)

    sampler = DistributedSampler(
        splits["train"], num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=tc.seed
    )
    # A 1-row last batch breaks batch-norm and is a noisy step: drop it (and only it).
    drop_last = len(sampler) > cfg.data.batch_size and len(sampler) % cfg.data.batch_size == 1
    train_loader = run_loader(cfg, splits["train"], modalities, pin, sampler=sampler, drop_last=drop_last)
    valid_loader = run_loader(cfg, splits["valid"], modalities, pin)
    steps_per_epoch = len(train_loader)
    opt = setup_optimisation(model, tc, steps_per_epoch, device)

    state = TrainState()
    if resume:
        state = restore_state(out_dir / "last", cfg, model, opt.optimizer, opt.scheduler, opt.scaler)
    ddp_model = wrap_model(net, device, env)
    logger = RunLogger(out_dir, enabled=env.is_main, resume_step=state.step if resume else None)
    if env.is_main and not resume:
        logger.log("start", epoch=0, step=0, params=count_params(model), device=str(device),
                   world_size=env.world_size, steps_per_epoch=steps_per_epoch,
                   feature_cache=features.stats, feature_scales=scales)

    first_epoch = tc.epochs if state.stopped_early else state.epoch
    bar = ProgressBar(enabled=progress and env.is_main, epochs=tc.epochs,
                      steps_per_epoch=steps_per_epoch, start_epoch=state.epoch)
    with logger, bar:
        for epoch in range(first_epoch, tc.epochs):
            sampler.set_epoch(epoch)  # the order of epoch k depends on (seed, k) only
            train_loader.generator.manual_seed(_epoch_seed(tc.seed, epoch, env.rank))  # worker seeds
            bar.start_epoch(epoch)
            train_losses, rows, epoch_time = _train_epoch(
                ddp_model, train_loader, state, opt, tc=tc, multilabel=info.multilabel, epoch=epoch,
                env=env, device=device, pin=pin, bar=bar, logger=logger)

            # --- validate, decide, save --------------------------------------------------
            sync_buffers(ddp_model, env)
            val = None
            if env.is_main:
                val = evaluate(net, valid_loader, device, modalities=modalities,
                               per_modality=False, precision=tc.precision)
            val = broadcast_from_main(val, env)  # every rank takes rank 0's decisions
            improved = _record_validation(state, val, tc, epoch)
            record = {"epoch": epoch + 1, "step": state.step, "lr": opt.scheduler.get_last_lr()[0],
                      "train": train_losses, "val": drop_empty(val), "improved": improved,
                      "epoch_time_s": epoch_time, "samples_per_s": rows * env.world_size / epoch_time}
            state.history.append(record)
            logger.log("epoch", **record)
            if env.is_main:
                ckpt = dict(model=model, optimizer=opt.optimizer, scheduler=opt.scheduler, scaler=opt.scaler,
                            config=cfg.model_dump(mode="json"), info=info)
                if improved:
                    save_state(out_dir / "best", state, ckpt, val)
                save_state(out_dir / "last", state, ckpt, val)  # last: a crash after it loses nothing
            barrier(env)
            bar.end_epoch(f"val {tc.monitor} {val[tc.monitor]:.4f}")
            if state.stopped_early:
                break

        test_metrics = None
        if env.is_main and "test" in splits:
            test_metrics = _test_best(cfg, info, modalities, features, splits["test"], device, pin)
            logger.log("test", epoch=state.best_epoch, step=state.step, **drop_empty(test_metrics))
        if env.is_main:
            write_json_atomic(out_dir / "results.json",
                              run_results(cfg, state, test_metrics, model, env, device))
        barrier(env)

    best = next((dict(h["val"], epoch=h["epoch"]) for h in state.history if h["epoch"] == state.best_epoch), {})
    return TrainResult(out_dir, best, state.history, test_metrics, model)


def _train_epoch(
    ddp_model: nn.Module, loader: Any, state: TrainState, opt: Optimisation, *, tc: TrainConfig,
    multilabel: bool, epoch: int, env: DistEnv, device: torch.device, pin: bool, bar: ProgressBar,
    logger: RunLogger,
) -> tuple[dict[str, float], int, float]:
    """One pass over the training loader, a :func:`train_step` a batch. Returns the mean of each
    loss part over every rank's rows, the rows this rank saw, and the seconds it took."""
    dropout_rng = torch.Generator().manual_seed(_epoch_seed(tc.seed, epoch, env.rank))
    ddp_model.train()
    loss_sums = torch.zeros(4, dtype=torch.float64, device=device)
    rows = 0
    started = time.perf_counter()
    for batch in loader:
        batch = batch.to(device, non_blocking=pin)
        parts = train_step(ddp_model, batch, tc=tc, multilabel=multilabel, optimizer=opt.optimizer,
                           scaler=opt.scaler, scheduler=opt.scheduler, dropout_rng=dropout_rng, device=device)
        state.step += 1
        rows += len(batch)
        loss_sums += torch.stack([p.detach().double() for p in parts]) * len(batch)
        bar.step()
        if state.step % tc.log_every == 0:
            losses = _loss_dict(parts)
            bar.status(f"loss {losses['total']:.4f}")
            logger.log("step", epoch=epoch + 1, step=state.step, lr=opt.scheduler.get_last_lr()[0], **losses)
    epoch_time = time.perf_counter() - started
    state.train_time_s += epoch_time
    state.samples_seen += rows * env.world_size
    train_losses = {
        name: all_reduce_mean(float(value) / max(rows, 1), env, device)
        for name, value in zip(LossParts._fields, loss_sums, strict=False)
    }
    return train_losses, rows, epoch_time


def _record_validation(state: TrainState, val: dict[str, Any], tc: TrainConfig, epoch: int) -> bool:
    """Count epoch ``epoch`` done in ``state`` with validation metrics ``val``: update the best
    epoch and the early-stopping count. Returns whether the monitored metric improved."""
    state.epoch = epoch + 1
    improved = _improved(val[tc.monitor], state.best_metric, lower_is_better=tc.monitor == "loss")
    if improved:
        state.best_metric, state.best_epoch, state.bad_epochs = val[tc.monitor], epoch + 1, 0
    else:
        state.bad_epochs += 1
    patience = tc.early_stopping_patience
    state.stopped_early = patience is not None and state.bad_epochs >= patience and state.epoch < tc.epochs
    return improved


def _test_best(
    cfg: RunConfig, info: Any, modalities: list[str], features: FeatureCache, test: Dataset,
    device: torch.device, pin: bool,
) -> dict[str, Any]:
    """The test metrics of the run's ``best/`` checkpoint; its logits go to
    ``test_predictions.npz``."""
    out_dir = Path(cfg.train.out_dir)
    best_model = build_model(cfg.model, info, modalities=modalities).to(device)
    load_weights(best_model, out_dir / "best")
    test_loader = run_loader(cfg, test, modalities, pin)
    rows: dict[str, torch.Tensor] = {}
    metrics = evaluate(features.view(best_model), test_loader, device, modalities=modalities,
                       precision=cfg.train.precision, outputs=rows)
    if rows:
        arrays = {k: v.numpy() for k, v in rows.items()}
        write_atomic(out_dir / TEST_PREDICTIONS, lambda tmp: _savez(tmp, arrays))
    return metrics


TEST_PREDICTIONS = "test_predictions.npz"


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a path
        np.savez(f, **arrays)


def read_test_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """``{"logits", "labels"}`` of a finished run's test split (rows in the split's order)."""
    path = Path(run_dir) / TEST_PREDICTIONS
    if not path.is_file():
        raise InputError(f"{path} is missing: the run has no test split, or predates "
                         "mmfurnace writing its test predictions")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    last = out_dir / "last"
    if resume and not is_checkpoint(last):
        raise InputError(f"--resume: no checkpoint to resume from at {last}")
    if not resume and is_checkpoint(last):
        raise InputError(
            f"{out_dir} already holds a run (checkpoint {last}); pass --resume to continue it "
            "or choose another train.out_dir"
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
