"""Checkpoints that resume exactly and are never half-written.

A checkpoint is a directory:
    model.safetensors  weights (safetensors; shared tensors de-duplicated)
    state.pt           optimiser, scheduler, grad scaler, RNG states, epoch, step, best metric,
                       early-stopping counter; loaded with ``torch.load(weights_only=True)``
    meta.json          format version, mmfurnace version, run config, DatasetInfo, metrics
    complete           marker written last; a directory without it is not a checkpoint
    compression.json   (compressed checkpoints) the method's config, and for a channel-pruned
                       model the attributes its narrower layers need (``shape_attributes``)

Saving builds the new checkpoint in a staging directory and swaps it in whole
(:func:`mmfurnace.io.atomic_dir`): a crash at any point leaves either the previous checkpoint in
``<name>`` or, in the instant between the two renames, in ``.<name>.old`` -- which
:func:`load_checkpoint` falls back to.

:func:`load_model` is the one way to get a model back from a checkpoint, whatever wrote it:
training, or any compression method that saves a checkpoint (pruned, distilled, FP16/BF16).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

import mmfurnace
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.io import atomic_dir, json_text, recover_dir
from mmfurnace.io import write_json_atomic as write_json_atomic  # callers import it from here too
from mmfurnace.models.weights import load_weights_file, rebuild_model

FORMAT_VERSION = 1
WEIGHTS, STATE, META, COMPLETE = "model.safetensors", "state.pt", "meta.json", "complete"
COMPRESSION = "compression.json"
FILES = (WEIGHTS, STATE, META, COMPLETE)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read back. ``state`` holds what :func:`save_checkpoint` put in state.pt."""

    path: Path
    weights: dict[str, Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]
    info: DatasetInfo

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta["metrics"]

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def step(self) -> int:
        return int(self.state["step"])


@dataclass(frozen=True)
class CheckpointMeta:
    """What :func:`load_model` returns next to the model: the typed run config and the rest.

    compression: the checkpoint's compression.json (method config, ``parent``, and for a
    channel-pruned model ``shape_attributes``); None for a checkpoint training wrote.
    """

    config: Any  # mmfurnace.config.RunConfig (imported lazily: config imports train.config)
    info: DatasetInfo
    metrics: dict[str, Any]
    epoch: int
    step: int
    path: Path
    mmfurnace_version: str
    compression: dict[str, Any] | None = None


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    step: int,
    rng_states: dict[str, Any] | None,
    config: dict[str, Any],
    info: DatasetInfo,
    metrics: dict[str, Any],
    best_metric: float | None = None,
    bad_epochs: int = 0,
    extra: dict[str, Any] | None = None,
    compression: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint to ``directory``, replacing the one there only once done.

    ``epoch`` is the number of epochs completed, ``step`` the number of optimiser steps.
    ``rng_states`` comes from :func:`capture_rng_states`. ``extra`` holds more trainer state
    (plain Python values and tensors only, so it loads with ``weights_only=True``).
    ``compression``: written as compression.json (what :func:`load_model` needs to rebuild a
    compressed model). Returns the directory.
    """
    directory = Path(directory)
    state = {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states,
        "best_metric": best_metric,
        "bad_epochs": int(bad_epochs),
        "extra": extra or {},
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "mmfurnace_version": mmfurnace.__version__,
        "epoch": int(epoch),
        "step": int(step),
        "config": config,
        "info": info.to_dict(),
        "metrics": metrics,
    }
    weights_meta = {"format": "pt", "mmfurnace_version": mmfurnace.__version__}
    with atomic_dir(directory) as staging:
        safetensors.torch.save_model(model, str(staging / WEIGHTS), weights_meta)
        torch.save(state, staging / STATE)
        (staging / META).write_text(json_text(meta), encoding="utf-8")
        if compression is not None:
            (staging / COMPRESSION).write_text(json_text(compression), encoding="utf-8")
        (staging / COMPLETE).write_text(f"{epoch} {step}\n", encoding="utf-8")
    return directory


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Weights are read with safetensors, state.pt with ``torch.load(weights_only=True)``: nothing
    in a checkpoint can run code. Raises InputError naming the path when the directory is not a
    complete mmfurnace checkpoint of this format version.
    """
    path = _resolve(Path(directory))
    meta = _read_meta(path)
    try:
        weights = safetensors.torch.load_file(str(path / WEIGHTS), device=str(device))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path / WEIGHTS}: cannot read weights: {err}") from None
    try:
        state = torch.load(path / STATE, map_location=device, weights_only=True)
    except Exception as err:  # unpickling errors, truncated files
        raise InputError(f"{path / STATE}: cannot read training state: {err}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path / STATE}: not an mmfurnace v{FORMAT_VERSION} training state")
    try:
        info = DatasetInfo.from_dict(meta["info"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{path / META}: bad dataset info: {err}") from None
    return LoadedCheckpoint(path=path, weights=weights, state=state, meta=meta, info=info)


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load a checkpoint's weights into ``model`` in place (strict: names and shapes must match)."""
    load_weights_file(model, _resolve(Path(directory)) / WEIGHTS)


def load_encoder_weights(model: nn.Module, modality: str, directory: str | Path) -> int:
    """Copy the ``modality`` encoder of a checkpoint into ``model.encoders[modality]`` (a warm
    start, e.g. from a unimodal run's ``best/``). Names and shapes must match exactly.

    Returns the number of tensors copied; raises InputError naming the mismatch.
    """
    path = _resolve(Path(directory))
    _read_meta(path)  # refuse anything that is not one of our checkpoints
    prefix = f"encoders.{modality}."
    try:
        with safetensors.safe_open(str(path / WEIGHTS), framework="pt") as weights:
            names = list(weights.keys())  # a safe_open handle is not iterable itself
            source = {k[len(prefix):]: weights.get_tensor(k) for k in names if k.startswith(prefix)}
            found = sorted({k.split(".")[1] for k in names if k.startswith("encoders.")})
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path / WEIGHTS}: cannot read weights: {err}") from None
    if not source:
        raise InputError(f"{path} has no {modality} encoder to start from (it has {found})")
    target = model.encoders[modality].state_dict()
    wrong = [
        f"{name} {tuple(source[name].shape) if name in source else 'missing'} vs {tuple(t.shape)}"
        for name, t in target.items()
        if name not in source or source[name].shape != t.shape
    ]
    extra = sorted(set(source) - set(target))
    if wrong or extra:
        raise InputError(
            f"{path}: its {modality} encoder does not fit this model's "
            f"(checkpoint vs model: {'; '.join(wrong[:3]) or 'extra ' + ', '.join(extra[:3])}); "
            "start from a checkpoint trained with the same model.encoders settings"
        )
    model.encoders[modality].load_state_dict(source)
    return len(source)


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """The model a checkpoint holds, as it was saved, and its metadata.

    Rebuilt from the checkpoint's run config and DatasetInfo; a compressed checkpoint's
    compression.json is read when present, so a channel-pruned model gets its narrower layers
    back and an FP16/BF16 one its dtype (:func:`mmfurnace.models.weights.rebuild_model`).
    Returns ``(model in eval mode on device, CheckpointMeta)``. What eval, compress, export,
    profile and serve load a checkpoint with.
    """
    meta = load_meta(directory)
    attributes = (meta.compression or {}).get("shape_attributes")
    model = rebuild_model(meta.config.model, meta.info, meta.path / WEIGHTS,
                          modalities=list(meta.config.data.modalities), shape_attributes=attributes,
                          device=device)
    return model, meta


def load_meta(directory: str | Path) -> CheckpointMeta:
    """A checkpoint's :class:`CheckpointMeta` (typed run config, info, metrics, compression),
    without loading its weights. InputError when the directory is not a checkpoint."""
    from mmfurnace.config import RunConfig  # mmfurnace.config imports mmfurnace.train.config
    from mmfurnace.errors import ConfigError
    from mmfurnace.typed_config import parse

    path = _resolve(Path(directory))
    raw = _read_meta(path)
    try:
        info = DatasetInfo.from_dict(raw["info"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{path / META}: bad dataset info: {err}") from None
    try:
        cfg = parse(RunConfig, raw["config"], source=str(path / META))
    except ConfigError as err:
        raise InputError(f"{path / META}: config does not describe a run: {err}") from None
    return CheckpointMeta(
        config=cfg,
        info=info,
        metrics=raw.get("metrics", {}),
        epoch=int(raw["epoch"]),
        step=int(raw["step"]),
        path=path,
        mmfurnace_version=str(raw["mmfurnace_version"]),
        compression=_read_compression(path),
    )


def is_checkpoint(directory: str | Path) -> bool:
    """True when ``directory`` (or its crash-recovery twin) holds a complete checkpoint."""
    try:
        _resolve(Path(directory))
    except InputError:
        return False
    return True


def capture_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, as tensors/ints so weights_only can load them."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states`."""
    py = states["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = states["numpy"]
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _resolve(directory: Path) -> Path:
    """The directory holding the complete checkpoint, or InputError saying what is missing."""
    if (directory / COMPLETE).is_file():
        return directory
    recovered = recover_dir(directory)  # crashed between the two renames of a save: .<name>.old
    if recovered is not None and (recovered / COMPLETE).is_file():
        return recovered
    if not directory.exists():
        raise InputError(f"checkpoint not found: {directory} does not exist")
    if not directory.is_dir():
        raise InputError(f"{directory} is not a checkpoint directory (it is a file)")
    missing = [name for name in FILES if not (directory / name).is_file()]
    raise InputError(
        f"{directory} is not a complete mmfurnace checkpoint: missing {', '.join(missing)}"
    )


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path / META}: cannot read checkpoint metadata: {err}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path / META}: not an mmfurnace checkpoint (not a JSON object)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path / META}: checkpoint format version {version!r}, this mmfurnace "
            f"({mmfurnace.__version__}) reads version {FORMAT_VERSION}"
        )
    missing = [k for k in ("config", "info", "epoch", "step", "mmfurnace_version") if k not in meta]
    if missing:
        raise InputError(f"{path / META}: missing {', '.join(missing)}")
    return meta


def _read_compression(path: Path) -> dict[str, Any] | None:
    file = path / COMPRESSION
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{file}: cannot read the compression record: {err}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{file}: not a compression record (not a JSON object)")
    return raw
