"""Fresh small models exported once per session; batches with padding and absent rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfurnace.data.batch import Batch
from mmfurnace.data.info import DatasetInfo
from mmfurnace.export import export_model, make_example_batch
from mmfurnace.models import EncoderConfig, ModelConfig, build_model

ENCODERS = {"audio": "cnn1d", "image": "lenet", "text": "transformer"}


def example_info() -> DatasetInfo:
    return DatasetInfo(
        modalities=("audio", "image", "text"),
        num_classes=10,
        multilabel=False,
        class_names=tuple(str(i) for i in range(10)),
        input_shapes={"image": (1, 28, 28), "audio": (None, 20), "text": (None,)},
        input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
        vocab_size=1000,
    )


def small_config(fusion: str) -> ModelConfig:
    # Widths of 32 keep export + every backend within the test budget on two cores.
    return ModelConfig(
        encoders={m: EncoderConfig(name=n, dim=32, heads=4) for m, n in ENCODERS.items()},
        fusion=fusion,
        hidden_dim=32,
        heads=4,
    )


PREPROCESSING = {"image": {"size": [28, 28], "mean": [0.5], "std": [0.5]}, "audio": {"n_mfcc": 20}}


class Exported:
    """A fresh model, its DatasetInfo and config, and where it was exported."""

    def __init__(self, fusion: str, root: Path) -> None:
        torch.manual_seed(0)
        self.info = example_info()
        self.config = small_config(fusion)
        self.model = build_model(self.config, self.info).eval()
        self.dir = export_model(
            self.model, self.info, root / fusion, config=self.config, preprocessing=PREPROCESSING
        )

    def eager(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch.inputs, batch.present, batch.valid).logits


@pytest.fixture(scope="session")
def info() -> DatasetInfo:
    return example_info()


@pytest.fixture(scope="session")
def cross(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported("cross_attention", tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def late(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported("late", tmp_path_factory.mktemp("exports"))


@pytest.fixture(params=["cross_attention", "late"])
def exported(request: pytest.FixtureRequest) -> Exported:
    return request.getfixturevalue("cross" if request.param == "cross_attention" else "late")


@pytest.fixture(scope="session")
def odd_batch(info: DatasetInfo) -> Batch:
    """Batch 6, other sequence lengths than at export (which used 13 / 29), rows 1.. missing
    one modality each, padded rows."""
    batch = make_example_batch(info, 6, lengths={"audio": 50, "text": 23}, seed=11)
    assert not all(bool(p.all()) for p in batch.present.values())
    return batch


def tol(reference: torch.Tensor, relative: float = 1e-4) -> float:
    return relative * max(1.0, float(reference.abs().max()))
