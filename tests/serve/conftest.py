"""Shared serving fixtures: a tiny exported model with real preprocessing settings, a
tokenizer, and real PNG / WAV / text samples — all made here, offline, in a few seconds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image, ImageDraw

from mmfurnace.data.info import DatasetInfo
from mmfurnace.data.text import build_wordpiece_tokenizer
from mmfurnace.models import build_model
from mmfurnace.models.builders import small_config

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PREPROCESSING = {
    "modalities": ["audio", "image", "text"],
    "image": {"size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.5]},
    "audio": {"sample_rate": 16000, "features": "mfcc", "n_mfcc": 20, "n_mels": 40, "n_fft": 512,
              "hop_length": 160, "max_seconds": 1.0},
    "text": {"max_length": 16},
}


def png_bytes(digit: int, size: int = 28) -> bytes:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).text((size // 3, size // 4), str(digit), fill=255)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(freq: float, seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(int(freq)).standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tokenizer():
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(10)] * 3
    return build_wordpiece_tokenizer(corpus, vocab_size=80)


@pytest.fixture(scope="session")
def info(tokenizer) -> DatasetInfo:
    return DatasetInfo(
        modalities=("audio", "image", "text"),
        num_classes=10,
        multilabel=False,
        class_names=tuple(WORDS),
        input_shapes={"image": (1, 28, 28), "audio": (None, 20), "text": (None,)},
        input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
        vocab_size=tokenizer.get_vocab_size(),
    )


@pytest.fixture(scope="session")
def model_config():
    return small_config("cross_attention")


@pytest.fixture(scope="session")
def model(info, model_config):
    torch.manual_seed(0)
    return build_model(model_config, info).eval()


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, model, info, model_config, tokenizer) -> Path:
    """An ONNX export (split graphs + weights) with preprocessing settings and tokenizer.json."""
    from mmfurnace.export import export_model

    out = export_model(model, info, tmp_path_factory.mktemp("export") / "tiny", formats=("onnx",),
                       preprocessing=PREPROCESSING, config=model_config, verify=False)
    tokenizer.save(str(out / "tokenizer.json"))  # until the exporter copies the tokenizer itself
    return out


@pytest.fixture(scope="session")
def samples() -> list[dict[str, object]]:
    """Real raw requests: PNG bytes, WAV bytes, text; with modality subsets mixed."""
    rows = []
    for i in range(10):
        row = {"image": png_bytes(i), "audio": wav_bytes(300 + 50 * i, seconds=0.3 + 0.05 * i), "text": f"{WORDS[i]} {WORDS[(i + 3) % 10]}"}
        if i % 3 == 1:
            del row["audio"]
        if i % 4 == 2:
            del row["image"]
        rows.append(row)
    return rows
