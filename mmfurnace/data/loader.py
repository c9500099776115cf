"""A DataLoader that yields :class:`~mmfurnace.data.batch.Batch` and reproduces its order.

Shuffling draws from a generator seeded with ``seed``, and each worker seeds numpy and
``random`` from its torch seed, so the same seed gives the same batches with any number of
workers.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmfurnace.data.batch import collate_samples
from mmfurnace.errors import InputError


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from the seed torch gave it (picklable)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    *,
    modalities: Sequence[str],
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    seed: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """Wrap ``dataset`` (yielding Samples) in a DataLoader yielding Batches.

    ``modalities`` are the modalities every batch declares in ``present`` (absent ones are
    marked False, not dropped). ``persistent_workers`` None means on whenever there are
    workers, so epochs do not pay the start-up again. ``sampler`` (e.g. a
    DistributedSampler) replaces ``shuffle``.
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be > 0, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    if not modalities:
        raise InputError("modalities is empty; name at least one modality to batch")
    generator = torch.Generator()
    generator.manual_seed(seed)
    workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        # functools.partial of a module-level function pickles for spawned workers.
        collate_fn=functools.partial(collate_samples, modalities=sorted(modalities)),
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_worker if workers else None,
        generator=generator,
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=(workers if persistent_workers is None else persistent_workers)
        and workers,
    )
