"""torchrun / DDP plumbing: read the launcher's environment, pick the device, wrap, clean up.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR / MASTER_PORT); without them
the run is a single process and every function here is a no-op. The process group uses NCCL
on CUDA and gloo on CPU. Only rank 0 logs, writes checkpoints and evaluates the test split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmfurnace.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``initialized``: we created the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_env() -> DistEnv:
    """The launcher's RANK / WORLD_SIZE / LOCAL_RANK, or a single process when unset."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """"auto" -> this rank's GPU when CUDA is available, else the CPU; otherwise ``name``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a torch device (try auto, cpu, cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return device


def init_distributed(env: DistEnv, device: torch.device) -> DistEnv:
    """Create the process group (NCCL on CUDA, gloo on CPU) when the job has several ranks."""
    if not env.distributed or dist.is_initialized():
        return env
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return DistEnv(env.rank, env.world_size, env.local_rank, initialized=True)


def wrap_model(model: nn.Module, device: torch.device, env: DistEnv) -> nn.Module:
    """DDP-wrap under several ranks (rank 0's weights are broadcast); the model itself otherwise.

    ``find_unused_parameters``: a batch may lack a modality entirely (or lose it to modality
    dropout), and that encoder then takes no part in the step.
    """
    if not env.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (for saving, evaluating, exporting)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, env: DistEnv, device: torch.device) -> float:
    """Mean of a float over ranks (for logging train losses of the whole job)."""
    if not env.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / env.world_size


def cleanup(env: DistEnv) -> None:
    """Destroy the process group if this process created it."""
    if env.initialized and dist.is_initialized():
        dist.destroy_process_group()


def sync_buffers(model: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (batch-norm running stats) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step of an epoch
    each rank still holds the statistics of its own last batch; this evens them out before
    evaluating and saving.
    """
    if not env.distributed:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)


def broadcast_from_main(value: Any, env: DistEnv) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not env.distributed:
        return value
    box = [value if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
