"""Tiny inputs for model tests: every shape small enough to run on two CPU cores."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mmfurnace.data.info import DatasetInfo
from mmfurnace.models.config import EncoderConfig, ModelConfig
from mmfurnace.models.outputs import EncoderOutput

MODALITY_SETS = [("image",), ("audio", "text"), ("audio", "image", "text")]
FEATURE_DIMS = {"audio": 12, "image": 16, "text": 8}  # deliberately different widths
VOCAB = 50


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # These models are tiny: with several intra-op threads on a loaded 2-core machine the
    # threads mostly wait on each other (measured ~25x slower). Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_info() -> DatasetInfo:
    return DatasetInfo(
        modalities=("audio", "image", "text"),
        num_classes=4,
        multilabel=False,
        class_names=("a", "b", "c", "d"),
        input_shapes={"image": (1, 12, 12), "audio": (None, 8), "text": (None,)},
        input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
        vocab_size=VOCAB,
    )


def tiny_config(fusion: str) -> ModelConfig:
    """Every width 16, no dropout, so outputs are deterministic in train mode too."""
    return ModelConfig(
        encoders={
            "image": EncoderConfig(name="lenet", dim=16, layers=2, dropout=0.0),
            "audio": EncoderConfig(name="cnn1d", dim=16, layers=2, dropout=0.0),
            "text": EncoderConfig(name="transformer", dim=16, layers=1, heads=2, dropout=0.0),
        },
        fusion=fusion,
        hidden_dim=16,
        heads=2,
        layers=1,
        rank=2,
        tensor_dim=4,
        proj_dim=8,
        dropout=0.0,
    )


def make_inputs(
    batch: int = 6, frames: int = 10, tokens: int = 7
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Raw model inputs with ragged audio/text padding; returns (inputs, valid)."""
    audio_len = torch.randint(3, frames + 1, (batch,))
    text_len = torch.randint(2, tokens + 1, (batch,))
    audio_pad = torch.arange(frames)[None] < audio_len[:, None]
    text_pad = torch.arange(tokens)[None] < text_len[:, None]
    inputs = {
        "image": torch.randn(batch, 1, 12, 12),
        "audio": torch.randn(batch, frames, 8).masked_fill(~audio_pad[..., None], 0.0),
        "text": torch.randint(1, VOCAB, (batch, tokens)).masked_fill(~text_pad, 0),
    }
    return inputs, {"audio": audio_pad, "text": text_pad}


def make_features(
    modalities: tuple[str, ...], batch: int = 5, seq: int = 4
) -> dict[str, EncoderOutput]:
    """Encoder outputs as leaf tensors (requires_grad) with a padded last token for audio."""
    features = {}
    for m in modalities:
        sequence = torch.randn(batch, seq, FEATURE_DIMS[m], requires_grad=True)
        pooled = torch.randn(batch, FEATURE_DIMS[m], requires_grad=True)
        valid = torch.ones(batch, seq, dtype=torch.bool)
        if m == "audio":
            valid[:, -1] = False
        features[m] = EncoderOutput(sequence, pooled, valid if m != "image" else None)
    return features
