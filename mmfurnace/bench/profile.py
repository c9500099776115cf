"""Where a step's time goes: per-stage timing, a torch.profiler trace, and a diagnosis.

A training step is the recipe's own :func:`~mmfurnace.train.recipe.train_step`, split into
stages -- data (waiting on the loader), h2d (host -> device copy), ``encoder.<modality>`` and
fusion (fusion + head), timed by hooks on those modules, then loss (consistency projections +
the loss), backward and optimizer, timed by train_step's ``stage`` hook -- and an inference step
into data, h2d, the encoders and fusion. Stage boundaries are read with
``time.perf_counter`` (after ``torch.cuda.synchronize`` on a GPU, so kernels are counted in the
stage that launched them); stages are contiguous, each starting where the previous ended. The
whole step is timed on its own clock around all of them: what the stages do not cover is
reported as "other", never silently dropped.

Stage timings come from plain steps; torch.profiler then records a few more steps (its
overhead would distort the stage times) for the operator table and the Chrome/Perfetto trace.
Python's cyclic garbage collector is paused inside timed steps and run between them, so its
pauses are not charged to whichever stage happened to allocate when it triggered.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfurnace.bench.flops import count_flops, flops_summary, measure_peak_flops
from mmfurnace.bench.profile_report import OTHER, ProfileReport, diagnose, plot_stages, stage_label
from mmfurnace.bench.stage_timing import Batches, StageTimer, peak_memory, run_steps
from mmfurnace.data.batch import Batch
from mmfurnace.data.synthetic import SyntheticDataset
from mmfurnace.errors import InputError

# Import paths kept for users of the profiler's pieces, which used to live here.
__all__ = ["OTHER", "ProfileReport", "SyntheticDataset", "diagnose", "peak_memory", "plot_stages",
           "profile_checkpoint", "profile_inference", "profile_training", "stage_label"]


def _move(batch: Batch, device: torch.device, dtype: torch.dtype = torch.float32) -> Batch:
    """``batch`` on ``device``, float inputs in ``dtype`` (an FP16/BF16 model's)."""
    pinned = device.type == "cuda" and all(t.is_pinned() for t in batch.inputs.values())
    batch = batch.to(device, non_blocking=pinned)
    if dtype == torch.float32:
        return batch
    inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
    return Batch(inputs=inputs, valid=batch.valid, present=batch.present, labels=batch.labels)


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def profile_training(
    model: nn.Module,
    loader: Any,
    *,
    steps: int = 20,
    device: torch.device | str = "cpu",
    trace_path: Path | None = None,
    warmup: int = 2,
    profile_steps: int = 3,
    top_n: int = 15,
    train: Any | None = None,
) -> ProfileReport:
    """Profile ``steps`` training steps of ``model`` (a MultimodalClassifier) on ``loader``
    (yielding Batches). Each step is the recipe's own
    :func:`~mmfurnace.train.recipe.train_step` with the settings of ``train`` (a TrainConfig;
    default: TrainConfig()): AdamW and its warmup/cosine schedule, the task + alpha *
    consistency + beta * regulariser loss, modality dropout, clipping, and the precision --
    a bf16 run is profiled under bf16 autocast, an fp16 one with its GradScaler. The model is
    trained in place (pass a copy to keep its weights) and left in the mode it came in."""
    from mmfurnace.train.config import TrainConfig
    from mmfurnace.train.precision import check_precision, make_scaler
    from mmfurnace.train.schedule import build_optimizer, warmup_cosine, warmup_steps_for
    from mmfurnace.train.step import train_step

    tc = train if train is not None else TrainConfig()
    device = torch.device(device)
    check_precision(tc.precision, device)
    model.to(device)
    was_training = model.training
    model.train()
    per_epoch = len(loader) if hasattr(loader, "__len__") else warmup + steps + profile_steps
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps_for(
        tc.warmup_epochs, steps_per_epoch=per_epoch, epochs=tc.epochs),
                              total_steps=max(tc.epochs * per_epoch, warmup + steps + profile_steps))
    scaler = make_scaler(tc.precision, device)
    dropout_rng = torch.Generator().manual_seed(tc.seed)
    dtype = _float_dtype(model)

    def step(timer: StageTimer, batches: Batches) -> Batch:
        with timer.stage("data"):
            batch = batches.next()
        with timer.stage("h2d"):
            batch = _move(batch, device, dtype)
        train_step(model, batch, tc=tc, multilabel=bool(model.multilabel), optimizer=optimizer,
                   scaler=scaler, scheduler=scheduler, dropout_rng=dropout_rng, device=device,
                   stage=timer.stage)
        return batch

    try:
        return run_steps(step, loader, model=model, mode="train", steps=steps, device=device, warmup=warmup,
                    profile_steps=profile_steps, trace_path=trace_path, top_n=top_n)
    finally:
        model.train(was_training)


def profile_inference(
    model: nn.Module,
    loader: Any,
    *,
    steps: int = 20,
    device: torch.device | str = "cpu",
    trace_path: Path | None = None,
    warmup: int = 2,
    profile_steps: int = 3,
    top_n: int = 15,
    peak_flops: float | None = None,
    count: bool = True,
) -> ProfileReport:
    """Profile ``steps`` inference steps (eval mode, no grad): data, h2d, each encoder,
    fusion + head. With ``count``, the FLOPs of every timed batch are counted (outside the
    timed region) and reported as achieved FLOP/s over the encoder + fusion time, and as a
    fraction of ``peak_flops`` (see :func:`mmfurnace.bench.flops.measure_peak_flops`)."""
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    flops = [0]
    dtype = _float_dtype(model)

    def step(timer: StageTimer, batches: Batches) -> Batch:
        with timer.stage("data"):
            batch = batches.next()
        with timer.stage("h2d"):
            batch = _move(batch, device, dtype)
        with torch.no_grad():  # the serving path: encoders, then fusion + head (timed by hooks)
            features = {m: model.encode(m, batch.inputs[m], batch.valid.get(m), batch.present.get(m))
                        for m in model.modalities if m in batch.inputs}
            model.fuse(features, batch.present)
        return batch

    def add_flops(batch: Batch) -> None:
        flops[0] += count_flops(model, batch)["flops"]["total"]

    try:
        report = run_steps(step, loader, model=model, mode="inference", steps=steps, device=device, warmup=warmup,
                      profile_steps=profile_steps, trace_path=trace_path, top_n=top_n,
                      after_step=add_flops if count else None)
    finally:
        model.train(was_training)
    if count:
        ms = report.stage_ms()
        compute_s = sum(v for k, v in ms.items() if k.startswith("encoder.") or k == "fusion") / 1e3
        report.flops = flops_summary(flops[0] / steps, compute_s, peak_flops)
    return report

def profile_checkpoint(
    checkpoint_dir_or_export: str | Path,
    *,
    data_cfg_overrides: Mapping[str, Any] | Sequence[str] | None = None,
    steps: int = 20,
    out_dir: str | Path = "runs/profile",
    device: str = "cpu",
    mode: str = "both",
    split: str = "valid",
    synthetic: bool = False,
    warmup: int = 2,
    profile_steps: int = 3,
    top_n: int = 15,
    peak_size: int = 2048,
) -> dict[str, Any]:
    """Profile a training checkpoint or an export directory on its data; what
    ``mmfurnace profile CHECKPOINT`` runs.

    data_cfg_overrides: changes to the data section, as {"num_workers": 2} or
    ["num_workers=2", "root=data/digits-av"]. mode: "inference", "train" or "both" (training
    steps run on a copy of the model). synthetic: random inputs of the right shapes instead
    of the dataset (no data needed). Writes to ``out_dir``: profile.json, profile.md,
    stages.png and trace.json (the training trace when mode is "both"; the inference one is
    then trace_inference.json). Returns what profile.json holds.
    """
    from mmfurnace.bench.machine import machine_info
    from mmfurnace.data.loader import make_loader

    if mode not in ("inference", "train", "both"):
        raise InputError(f"mode {mode!r} is unknown; use inference, train or both")
    out_dir = Path(out_dir)
    model, info, data_cfg, train_cfg, source = _load(Path(checkpoint_dir_or_export), device)
    data_cfg = _override(data_cfg, data_cfg_overrides)
    modalities = list(model.modalities)
    if synthetic:
        frames = int((data_cfg.audio.max_seconds or 2.0) * data_cfg.audio.sample_rate) // data_cfg.audio.hop_length + 1
        dataset = SyntheticDataset(info, data_cfg.batch_size * 8, lengths={"audio": frames, "text": data_cfg.text.max_length},
                                   modalities=modalities)
    else:
        from mmfurnace.data.datasets import build_dataset
        from mmfurnace.data.info import check_same_data

        dataset = build_dataset(data_cfg, split)
        check_same_data(info, dataset.info, where=f"the {split} split at {data_cfg.root}")
    pin = data_cfg.pin_memory if data_cfg.pin_memory is not None else torch.device(device).type == "cuda"
    loader = make_loader(dataset, modalities=modalities, batch_size=data_cfg.batch_size, shuffle=True,
                         num_workers=data_cfg.num_workers, prefetch_factor=data_cfg.prefetch_factor, pin_memory=pin)
    common = dict(steps=steps, device=device, warmup=warmup, profile_steps=profile_steps, top_n=top_n)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[ProfileReport] = []
    if mode in ("inference", "both"):
        peak = measure_peak_flops(device, size=peak_size)
        trace = out_dir / ("trace_inference.json" if mode == "both" else "trace.json")
        reports.append(profile_inference(model, loader, trace_path=trace, peak_flops=peak, **common))
    if mode in ("train", "both"):
        # trained as the recipe trains: FP32 weights (an FP16/BF16 checkpoint's are upcast),
        # under the autocast of the precision the run trained in
        reports.append(profile_training(copy.deepcopy(model).float(), loader, trace_path=out_dir / "trace.json",
                                        train=train_cfg, **common))
    result = {
        "source": source,
        "machine": machine_info(),
        "settings": {"steps": steps, "warmup": warmup, "profile_steps": profile_steps, "device": device,
                     "split": None if synthetic else split, "synthetic": synthetic,
                     "data": data_cfg.model_dump(mode="json")},
        **{r.mode: r.to_dict() for r in reports},
        "files": {},
    }
    plot_stages(reports, out_dir / "stages.png")
    md = "\n".join([f"# Profile of `{source}`", "", *[r.to_markdown() for r in reports]])
    (out_dir / "profile.md").write_text(md, encoding="utf-8")
    written = [out_dir / n for n in ("profile.json", "profile.md", "stages.png")]
    written += [Path(r.trace_path) for r in reports if r.trace_path]
    result["files"] = {p.name: str(p) for p in written}
    (out_dir / "profile.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def _load(path: Path, device: str) -> tuple[nn.Module, Any, Any, Any, str]:
    """(model, DatasetInfo, DataConfig, TrainConfig, description) of a checkpoint or export."""
    from mmfurnace.data.config import DataConfig
    from mmfurnace.train.config import TrainConfig

    if (path / "export.json").is_file():
        from mmfurnace.export.runtimes.torch_common import load_eager_model
        from mmfurnace.export.spec import load_spec

        spec = load_spec(path)
        prep = {k: v for k, v in (spec.preprocessing or {}).items() if k in DataConfig.model_fields}
        data = DataConfig.model_validate({**prep, "modalities": list(spec.modalities)})
        return load_eager_model(spec).to(device), spec.info, data, TrainConfig(), f"export {path}"
    from mmfurnace.train.checkpoint import load_model

    model, meta = load_model(path, device=device)
    return model, meta.info, meta.config.data, meta.config.train, f"checkpoint {path}"


def _override(cfg: Any, overrides: Mapping[str, Any] | Sequence[str] | None) -> Any:
    from mmfurnace.typed_config import apply_overrides, parse

    if not overrides:
        return cfg
    raw = cfg.model_dump(mode="json")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            node = raw
            *parents, last = str(key).removeprefix("data.").split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    else:
        raw = apply_overrides(raw, [o.removeprefix("data.") for o in overrides])
    return parse(type(cfg), raw, source="data overrides")
