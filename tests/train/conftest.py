"""Fixtures for the train tests: tiny in-memory datasets and run configs (see tinydata.py)."""

from __future__ import annotations

import pytest
import torch

from mmfurnace.data.loader import make_loader
from tests.train.tinydata import TinyDataset, tiny_datasets


@pytest.fixture
def datasets():
    return tiny_datasets()


@pytest.fixture
def tiny_loader():
    dataset = TinyDataset(24, seed=5)
    return make_loader(dataset, modalities=dataset.info.modalities, batch_size=8, shuffle=False)


@pytest.fixture(autouse=True)
def _restored_rng():
    # train() seeds the global RNGs (as a recipe should); keep that from leaking between tests.
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
