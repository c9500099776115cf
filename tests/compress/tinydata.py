"""Tiny in-memory multimodal data with the real shapes (image (1, 28, 28), audio (frames, 20)
MFCC-like frames, text token ids) and a class signal in every modality, plus a checkpoint
trained on it. No files, no downloads: every compression test starts from here."""

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

NUM_CLASSES = 4
VOCAB = 40
INFO = DatasetInfo(
    modalities=("audio", "image", "text"),
    num_classes=NUM_CLASSES,
    multilabel=False,
    class_names=("a", "b", "c", "d"),
    input_shapes={"audio": (None, 20), "image": (1, 28, 28), "text": (None,)},
    input_dtypes={"audio": "float32", "image": "float32", "text": "int64"},
    vocab_size=VOCAB,
)


class TinyAV(Dataset):
    """``size`` samples from ``seed``; sample i has class i % 4. Each modality alone is a weak,
    noisy cue, so the fusion matters and accuracy is below 100 %; some modalities are missing."""

    def __init__(self, size: int, *, seed: int) -> None:
        self.info = INFO
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for i in range(size):
            label = i % NUM_CLASSES
            image = torch.randn(1, 28, 28, generator=g)
            image[0, 4 + 5 * label: 8 + 5 * label, 6:22] += 0.8
            frames = 24 + int(torch.randint(0, 17, (1,), generator=g))
            audio = torch.randn(frames, 20, generator=g)
            audio[:, 2 + 4 * label: 5 + 4 * label] += 0.7
            length = 5 + int(torch.randint(0, 6, (1,), generator=g))
            text = torch.randint(8, VOCAB, (length,), generator=g)
            if float(torch.rand(1, generator=g)) < 0.7:
                text[int(torch.randint(0, length, (1,), generator=g))] = 2 + label
            inputs = {"audio": audio, "image": image, "text": text}
            if i % 9 == 4:
                del inputs["audio"]
            if i % 11 == 5:
                del inputs["text"]
            self.samples.append(Sample(inputs=inputs, label=torch.tensor(label)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def tiny_splits() -> dict[str, Dataset]:
    return {"train": TinyAV(160, seed=1), "valid": TinyAV(64, seed=2), "test": TinyAV(64, seed=3)}


def tiny_model_config(fusion: str = "cross_attention", dim: int = 16) -> ModelConfig:
    return ModelConfig(
        encoders={
            "audio": EncoderConfig(name="cnn1d", dim=dim, layers=2, dropout=0.0),
            "image": EncoderConfig(name="lenet", dim=dim, layers=2, dropout=0.0),
            "text": EncoderConfig(name="transformer", dim=dim, layers=1, heads=2, dropout=0.0),
        },
        fusion=fusion, hidden_dim=dim, heads=2, tensor_dim=4, proj_dim=8, dropout=0.0,
    )


def tiny_run_config(out_dir: Path, fusion: str = "cross_attention", epochs: int = 3) -> RunConfig:
    return RunConfig(
        data=DataConfig(batch_size=32, modalities=["audio", "image", "text"]),
        model=tiny_model_config(fusion),
        train=TrainConfig(epochs=epochs, lr=4e-3, warmup_epochs=0.5, out_dir=out_dir, seed=0, log_every=50),
    )


def train_tiny(out_dir: Path, fusion: str = "cross_attention", epochs: int = 3) -> Path:
    """Train the tiny model; returns the best checkpoint directory."""
    from mmfurnace.train.recipe import train

    result = train(tiny_run_config(out_dir, fusion, epochs), progress=False, datasets=tiny_splits())
    return Path(result.out_dir) / "best"
