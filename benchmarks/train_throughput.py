"""Training throughput: a plain MultiBench-style loop vs mmfurnace's training step.

    python benchmarks/train_throughput.py [--config configs/default.yaml] [key=value ...]
        [--steps 40] [--warmup 5] [--rounds 4] [--batch-size N] [--threads 1] [--json out.json]
    python benchmarks/train_throughput.py --tiny --steps 3 --warmup 1

Same model architecture (a fresh ``build_model`` under the same seed), same training split,
same batch size, same number of timed optimiser steps, same torch thread count, one process:

(a) ``plain``: MultiBench-style. The whole train split is materialised once as NumPy arrays
    (audio/text padded to the split's maximum length, absent modalities as zeros), a torch
    DataLoader over a Dataset that converts numpy -> torch per sample, default collate, FP32,
    per-batch host -> device copies, cross-entropy (BCE-with-logits when multilabel) only, a
    plain AdamW step. The model is called as ``model(inputs, present, padding)`` with
    all-True presence and all-True padding masks.
(b) ``mmfurnace``: the recipe's own :func:`mmfurnace.train.recipe.train_step`, fed as the
    recipe feeds it: PackedDataset + ``make_loader`` (Batch with presence masks and per-batch
    variable-length padding, a DistributedSampler as the recipe uses), ``drop_modalities``,
    ``autocast`` at ``train.precision``, ``total_loss`` (task + alpha*consistency +
    beta*regulariser), GradScaler, grad clipping at ``train.clip_grad_norm``,
    ``build_optimizer`` + ``warmup_cosine`` stepped every step, and the recipe's per-step
    bookkeeping (loss sums). Logging, validation and checkpointing are not part of the step.

Timing is interleaved: each variant first runs ``--warmup`` untimed steps, then ``--steps``
timed steps are split into ``--rounds`` rounds, and in every round both variants run their
share (alternating which goes first), so drifting machine load hits both alike. Data loading
is inside the timed region for both (num_workers from the config; 0 by default). samples/s is
rows trained / seconds; ms/step is seconds / steps.

--tiny packs a small synthetic dataset (digits-av shapes, some modalities missing) into a
temporary folder and uses it; it is also used when the configured data root has no packed
cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmfurnace.bench.machine import machine_info
from mmfurnace.config import RunConfig, load_run_config
from mmfurnace.data.batch import PAD_ID, Sample
from mmfurnace.data.cache import PackedDataset, pack_datasets
from mmfurnace.data.datasets import packed_root
from mmfurnace.data.info import DatasetInfo
from mmfurnace.data.loader import make_loader
from mmfurnace.modalities import SEQUENCE_MODALITIES
from mmfurnace.models import build_model
from mmfurnace.threads import torch_threads
from mmfurnace.train.distributed import read_env, resolve_device
from mmfurnace.train.precision import make_scaler
from mmfurnace.train.recipe import train_step
from mmfurnace.train.schedule import build_optimizer, warmup_cosine, warmup_steps_for

VARIANTS = ("plain", "mmfurnace")


# --------------------------------------------------------------------------- tiny data


class _ListDataset(Dataset):
    def __init__(self, samples: list[Sample], info: DatasetInfo) -> None:
        self.samples, self.info = samples, info

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def synthesize_packed(folder: Path, *, train: int = 192, valid: int = 32, seed: int = 0) -> Path:
    """A small packed cache with digits-av shapes (10 classes, audio (T, 20), image 1x28x28,
    text of ids < 1000); some samples lack a modality. Returns the cache directory."""
    info = DatasetInfo(
        modalities=("audio", "image", "text"),
        num_classes=10,
        multilabel=False,
        class_names=tuple(str(i) for i in range(10)),
        input_shapes={"audio": (None, 20), "image": (1, 28, 28), "text": (None,)},
        input_dtypes={"audio": "float32", "image": "float32", "text": "int64"},
        vocab_size=1000,
    )
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> _ListDataset:
        samples = []
        for i in range(n):
            label = i % 10
            image = torch.randn(1, 28, 28, generator=g) * 0.5
            image[0, :, label * 2 : label * 2 + 3] += 1.5
            audio = torch.randn(20 + int(torch.randint(0, 40, (1,), generator=g)), 20, generator=g)
            audio[:, label] += 1.5
            text = torch.randint(20, 1000, (3 + int(torch.randint(0, 8, (1,), generator=g)),), generator=g)
            text[0] = 4 + label
            inputs = {"audio": audio, "image": image, "text": text}
            if i % 5 == 1:
                del inputs["audio"]
            if i % 7 == 2:
                del inputs["text"]
            samples.append(Sample(inputs=inputs, label=torch.tensor(label)))
        return _ListDataset(samples, info)

    return pack_datasets(folder / "packed", {"train": make(train), "valid": make(valid)})


# --------------------------------------------------------------------------- (a) plain loop


class NumpyDataset(Dataset):
    """MultiBench style: fixed-size NumPy arrays in memory, numpy -> torch per sample."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
        self.arrays, self.labels = arrays, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {m: torch.from_numpy(a[i]) for m, a in self.arrays.items()}, torch.from_numpy(
            np.asarray(self.labels[i])
        )


def materialize(dataset: PackedDataset, modalities: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every sample of ``dataset`` as arrays: sequences padded once to the split's max length,
    absent modalities as zeros (PAD_ID for token ids)."""
    info = dataset.info
    samples = [dataset[i] for i in range(len(dataset))]
    arrays: dict[str, np.ndarray] = {}
    for m in modalities:
        rows = [s.inputs.get(m) for s in samples]
        real = [r for r in rows if r is not None]
        dtype = np.dtype(info.input_dtypes.get(m, "float32"))
        if real:
            trailing = tuple(real[0].shape[1:])
            longest = max(int(r.shape[0]) for r in real)
        else:  # no sample has it: declared shape, one row
            trailing = tuple(int(d or 1) for d in list(info.input_shapes[m])[1:])
            longest = int(info.input_shapes[m][0] or 1)
        fill = PAD_ID if np.issubdtype(dtype, np.integer) else 0
        out = np.full((len(samples), longest, *trailing), fill, dtype=dtype)
        for i, r in enumerate(rows):
            if r is not None:
                out[i, : r.shape[0]] = r.numpy()
        arrays[m] = out
    labels = np.stack([np.asarray(torch.as_tensor(s.label).numpy()) for s in samples])
    return arrays, labels


def plain_stepper(cfg: RunConfig, info: DatasetInfo, modalities: list[str], train_set: PackedDataset,
                  batch_size: int, device: torch.device) -> tuple[Callable[[], int], dict[str, Any]]:
    arrays, labels = materialize(train_set, modalities)
    loader = DataLoader(
        NumpyDataset(arrays, labels),
        batch_size=batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, info, modalities=modalities).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batches = _forever(loader)
    masks: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}

    def step() -> int:
        inputs, y = next(batches)
        inputs = {m: t.to(device) for m, t in inputs.items()}
        y = y.to(device)
        n = int(y.shape[0])
        if n not in masks:
            present = {m: torch.ones(n, dtype=torch.bool, device=device) for m in modalities}
            padding = {
                m: torch.ones(inputs[m].shape[:2], dtype=torch.bool, device=device)
                for m in modalities
                if m in SEQUENCE_MODALITIES
            }
            masks[n] = (present, padding)
        present, padding = masks[n]
        out = model(inputs, present, padding)
        if info.multilabel:
            loss = F.binary_cross_entropy_with_logits(out.logits, y.float())
        else:
            loss = F.cross_entropy(out.logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return n

    nbytes = sum(a.nbytes for a in arrays.values()) + labels.nbytes
    return step, {"materialized_mb": round(nbytes / 2**20, 1),
                  "padded_shapes": {m: list(a.shape) for m, a in arrays.items()}}


# --------------------------------------------------------------------------- (b) recipe step


def recipe_stepper(cfg: RunConfig, info: DatasetInfo, modalities: list[str], train_set: PackedDataset,
                   batch_size: int, device: torch.device, total_steps: int) -> tuple[Callable[[], int], dict[str, Any]]:
    """The loop body of mmfurnace.train.recipe._train (single process), replicated."""
    tc = cfg.train
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else device.type == "cuda"
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=tc.seed)
    drop_last = len(sampler) > batch_size and len(sampler) % batch_size == 1
    loader = make_loader(
        train_set,
        modalities=modalities,
        batch_size=batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=pin,
        seed=tc.seed,
        sampler=sampler,
        drop_last=drop_last,
    )
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, info, modalities=modalities).to(device)
    model.set_grad_checkpointing(tc.grad_checkpointing)
    model.train()
    steps_per_epoch = len(loader)
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(
        optimizer,
        warmup_steps=warmup_steps_for(tc.warmup_epochs, steps_per_epoch=steps_per_epoch, epochs=tc.epochs),
        total_steps=max(total_steps, 1),
    )
    scaler = make_scaler(tc.precision, device)
    dropout_rng = torch.Generator().manual_seed(tc.seed)
    loss_sums = torch.zeros(4, dtype=torch.float64, device=device)
    epoch = itertools.count()

    def epochs() -> Iterator[Any]:
        for e in epoch:
            sampler.set_epoch(e)
            yield from loader

    batches = epochs()

    def step() -> int:
        nonlocal loss_sums
        batch = next(batches).to(device, non_blocking=pin)
        parts = train_step(model, batch, tc=tc, multilabel=info.multilabel, optimizer=optimizer,
                           scaler=scaler, scheduler=scheduler, dropout_rng=dropout_rng, device=device)
        loss_sums += torch.stack([p.detach().double() for p in parts]) * len(batch)
        return len(batch)

    return step, {"precision": tc.precision, "alpha": tc.alpha, "beta": tc.beta,
                  "consistency": tc.consistency, "clip_grad_norm": tc.clip_grad_norm,
                  "modality_dropout": dict(tc.modality_dropout), "steps_per_epoch": steps_per_epoch}


# --------------------------------------------------------------------------- timing


def _forever(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run(cfg: RunConfig, *, steps: int, warmup: int, rounds: int, batch_size: int,
        device: torch.device, data_root: Path) -> dict[str, Any]:
    modalities = sorted(cfg.data.modalities)
    train_set = PackedDataset(data_root, "train", modalities=modalities)
    info = train_set.info
    modalities = list(info.modalities)
    steppers: dict[str, Callable[[], int]] = {}
    details: dict[str, dict[str, Any]] = {}
    steppers["plain"], details["plain"] = plain_stepper(cfg, info, modalities, train_set, batch_size, device)
    steppers["mmfurnace"], details["mmfurnace"] = recipe_stepper(
        cfg, info, modalities, train_set, batch_size, device, total_steps=warmup + steps
    )
    for name in VARIANTS:
        for _ in range(warmup):
            steppers[name]()
        _sync(device)
    totals = {name: {"steps": 0, "samples": 0, "seconds": 0.0, "round_samples_per_s": []} for name in VARIANTS}
    for r, share in enumerate(_split(steps, rounds)):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for name in order:
            rows = 0
            _sync(device)
            started = time.perf_counter()
            for _ in range(share):
                rows += steppers[name]()
            _sync(device)
            elapsed = time.perf_counter() - started
            t = totals[name]
            t["steps"] += share
            t["samples"] += rows
            t["seconds"] += elapsed
            t["round_samples_per_s"].append(rows / elapsed if elapsed > 0 else None)
    variants = {}
    for name in VARIANTS:
        t = totals[name]
        variants[name] = {
            **t,
            "batch_size": batch_size,
            "samples_per_s": t["samples"] / t["seconds"] if t["seconds"] > 0 else None,
            "ms_per_step": 1000 * t["seconds"] / t["steps"] if t["steps"] else None,
            **details[name],
        }
    a, b = variants["plain"]["samples_per_s"], variants["mmfurnace"]["samples_per_s"]
    return {
        "variants": variants,
        "ratio_b_over_a": b / a if a and b else None,
        "train_samples": len(train_set),
        "modalities": modalities,
        "params": sum(p.numel() for p in build_model(cfg.model, info, modalities=modalities).parameters()),
    }


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]["cpu"]
    lines = [
        f"machine: {m['model']} | {m['logical_cores']} logical cores, {m['usable_cores']} usable | "
        f"torch threads {result['threads']} | device {result['device']}",
        f"data: {result['data_root']} ({result['train_samples']} train samples, "
        f"{'+'.join(result['modalities'])}) | batch {result['batch_size']} | "
        f"{result['warmup']} warm-up + {result['steps']} timed steps in {result['rounds']} rounds",
        f"{'variant':<12}{'steps':>7}{'samples/s':>12}{'ms/step':>10}{'ratio b/a':>11}",
    ]
    for name in VARIANTS:
        v = result["variants"][name]
        ratio = result["ratio_b_over_a"] if name == "mmfurnace" else 1.0
        lines.append(
            f"{('(a) ' if name == 'plain' else '(b) ') + name:<12}{v['steps']:>7}"
            f"{v['samples_per_s']:>12.1f}{v['ms_per_step']:>10.1f}{ratio:>11.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both variants")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="synthesize a small packed dataset")
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.warmup < 0 or args.rounds <= 0:
        parser.error("--steps and --rounds must be > 0, --warmup >= 0")

    config_path = args.config if Path(args.config).is_file() else None
    cfg = load_run_config(config_path, args.overrides)
    batch_size = args.batch_size or cfg.data.batch_size
    device = resolve_device(cfg.train.device, read_env())
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        root = packed_root(Path(cfg.data.root))
        tiny = args.tiny or not (root / "info.json").is_file()
        if tiny:
            if not args.tiny:
                print(f"no packed cache at {root}; using --tiny data", file=sys.stderr)
            root = synthesize_packed(Path(tmp))
        with torch_threads(args.threads):
            result = run(cfg, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                         batch_size=batch_size, device=device, data_root=root)
            result["machine"] = machine_info()
    result.update(
        config=config_path, overrides=args.overrides, data_root=str(root) if not tiny else "tiny (synthetic)",
        tiny=tiny, steps=args.steps, warmup=args.warmup, rounds=min(args.rounds, args.steps),
        batch_size=batch_size, threads=args.threads, device=str(device),
    )
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
