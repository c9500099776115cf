"""Tiny in-memory multimodal data and configs for the train tests (no files, no downloads).

Three classes, three modalities, with a class signal in every modality and some modalities
missing per sample, so the real masking code paths run. Imported (as tests.train.tinydata) by
the tests, conftest.py and the torchrun script of the DDP test.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmfurnace.config import RunConfig
from mmfurnace.data.batch import Sample
from mmfurnace.data.config import DataConfig
from mmfurnace.data.info import DatasetInfo
from mmfurnace.models.config import EncoderConfig, ModelConfig
from mmfurnace.train.config import TrainConfig

NUM_CLASSES = 3
VOCAB = 16
INFO = DatasetInfo(
    modalities=("audio", "image", "text"),
    num_classes=NUM_CLASSES,
    multilabel=False,
    class_names=("zero", "one", "two"),
    input_shapes={"audio": (None, 6), "image": (1, 8, 8), "text": (None,)},
    input_dtypes={"audio": "float32", "image": "float32", "text": "int64"},
    vocab_size=VOCAB,
)


class TinyDataset(Dataset):
    """``size`` Samples drawn from ``seed``; sample i has class i % 3."""

    def __init__(self, size: int, *, seed: int = 0, missing: bool = True) -> None:
        self.info = INFO
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for i in range(size):
            label = i % NUM_CLASSES
            image = torch.randn(1, 8, 8, generator=g) * 0.5
            image[0, :, label * 2 : label * 2 + 3] += 1.5
            frames = 4 + int(torch.randint(0, 5, (1,), generator=g))
            audio = torch.randn(frames, 6, generator=g) * 0.5
            audio[:, label] += 1.5
            length = 3 + int(torch.randint(0, 4, (1,), generator=g))
            text = torch.randint(6, VOCAB, (length,), generator=g)
            text[0] = 3 + label
            inputs = {"audio": audio, "image": image, "text": text}
            if missing:
                if i % 5 == 1:
                    del inputs["audio"]
                if i % 7 == 2:
                    del inputs["text"]
                if i % 11 == 3:
                    del inputs["image"]
            self.samples.append(Sample(inputs=inputs, label=torch.tensor(label)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def tiny_datasets(train: int = 48, valid: int = 24, test: int = 24) -> dict[str, Dataset]:
    return {
        "train": TinyDataset(train, seed=1),
        "valid": TinyDataset(valid, seed=2),
        "test": TinyDataset(test, seed=3),
    }


def tiny_model_config(fusion: str = "cross_attention") -> ModelConfig:
    return ModelConfig(
        encoders={
            "audio": EncoderConfig(name="cnn1d", dim=16, layers=1, dropout=0.1),
            "image": EncoderConfig(name="lenet", dim=16, layers=1, dropout=0.1),
            "text": EncoderConfig(name="transformer", dim=16, layers=1, heads=2, dropout=0.1),
        },
        fusion=fusion,
        hidden_dim=16,
        heads=2,
        tensor_dim=4,
        proj_dim=8,
        dropout=0.1,
    )


def tiny_run_config(out_dir: Path, *, fusion: str = "cross_attention", batch_size: int = 16, **train: object) -> RunConfig:
    """A RunConfig for the tiny data; ``train`` overrides TrainConfig fields."""
    defaults: dict[str, object] = {
        "epochs": 2,
        "lr": 5e-3,
        "warmup_epochs": 0.5,
        "log_every": 2,
        "out_dir": out_dir,
        "seed": 0,
    }
    defaults.update(train)
    return RunConfig(
        data=DataConfig(batch_size=batch_size, modalities=["audio", "image", "text"]),
        model=tiny_model_config(fusion),
        train=TrainConfig(**defaults),
    )
