"""Fixtures for the compression tests: the tiny data (tinydata.py) and one checkpoint trained
on it once per session with the real training recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfurnace.data.loader import make_loader
from tests.compress.tinydata import INFO, tiny_splits, train_tiny


@pytest.fixture(scope="session")
def splits():
    return tiny_splits()


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """Best checkpoint of the tiny cross-attention model (3 epochs, ~85 % valid accuracy)."""
    torch.manual_seed(0)
    return train_tiny(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def test_batches(splits):
    return list(make_loader(splits["test"], modalities=INFO.modalities, batch_size=32, shuffle=False))


@pytest.fixture(scope="session")
def train_loader(splits):
    return make_loader(splits["train"], modalities=INFO.modalities, batch_size=32, shuffle=True, seed=0)


@pytest.fixture(autouse=True)
def _restore_torch_rng():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """The tiny splits written as a packed dataset on disk (for the benchmark scripts, which
    read data by path)."""
    from mmfurnace.data.cache import write_packed

    root = tmp_path_factory.mktemp("tiny_data")
    samples, names = [], []
    for split, dataset in tiny_splits().items():
        samples += dataset.samples
        names += [split] * len(dataset.samples)
    write_packed(root / "packed", samples, info=INFO, splits=names)
    return root
