"""A packed image + log-mel dataset written in MultiBench's AV-MNIST layout, read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfurnace.data.avmnist import AVMNIST
from mmfurnace.data.avmnist_write import (
    packed_to_avmnist,
    spectrogram_to_avmnist,
    tile_rows,
)
from mmfurnace.data.batch import Sample
from mmfurnace.data.cache import write_packed
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

COUNTS = {"train": 7, "valid": 3, "test": 4}


def pack(root: Path, *, features: str = "logmel", mels: int = 112) -> dict[str, list[Sample]]:
    """A tiny packed cache: images normalised with mean 0.5 / std 0.5, log-mel audio in dB
    floored 80 dB below each clip's peak, of varying length (some longer than 112 frames)."""
    rng = np.random.default_rng(0)
    samples: dict[str, list[Sample]] = {}
    for split, n in COUNTS.items():
        rows = []
        for i in range(n):
            pixels = rng.integers(0, 256, size=(1, 28, 28)) / 255.0
            frames = int(rng.integers(20, 140))
            peak = float(rng.uniform(-20, 10))
            db = np.maximum(peak - 80 * rng.random((frames, mels)), peak - 80)
            db[0, 0] = peak
            rows.append(Sample(
                inputs={"image": torch.tensor((pixels - 0.5) / 0.5, dtype=torch.float32),
                        "audio": torch.tensor(db, dtype=torch.float32)},
                label=torch.tensor(int(rng.integers(0, 10))),
                meta={"id": f"{split}{i}"},
            ))
        samples[split] = rows
    info = DatasetInfo(modalities=("audio", "image"), num_classes=10, multilabel=False,
                       class_names=tuple(str(d) for d in range(10)),
                       input_shapes={"audio": (None, mels), "image": (1, 28, 28)},
                       input_dtypes={"audio": "float32", "image": "float32"})
    stream = [s for split in COUNTS for s in samples[split]]
    write_packed(root, stream, info=info, splits=[s for s in COUNTS for _ in samples[s]])
    prep = {"image": {"mean": [0.5], "std": [0.5]}, "audio": {"features": features, "n_mels": mels}}
    (root / "preprocessing.json").write_text(json.dumps(prep))
    return samples


def test_spectrogram_scaling_crop_and_pad() -> None:
    db = np.full((130, 112), -50.0, dtype=np.float32)
    db[:, 0] = 10.0  # the peak
    db[:, 1] = -30.0  # 40 dB below it
    out = spectrogram_to_avmnist(db)
    assert out.shape == (112, 112)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], 255.0)
    np.testing.assert_allclose(out[:, 1], 127.5)
    np.testing.assert_allclose(out[:, 2], 63.75)  # 60 dB down: (80 - 60) / 80 * 255
    short = spectrogram_to_avmnist(db[:50])
    np.testing.assert_allclose(short[50:], 0.0)  # frames past the clip: silence
    np.testing.assert_allclose(short[:50], out[:50])
    narrow = spectrogram_to_avmnist(np.tile(np.linspace(-70, 10, 40, dtype=np.float32), (10, 1)))
    np.testing.assert_allclose(narrow[0], np.linspace(0, 255, 112), rtol=1e-5, atol=1e-3)  # 40 -> 112 bands


def test_tiling_repeats_every_sample_equally() -> None:
    rows = tile_rows(7, 30, np.random.default_rng(0))
    counts = np.bincount(rows, minlength=7)
    assert len(rows) == 30
    assert counts.max() - counts.min() <= 1
    assert list(tile_rows(5, None, np.random.default_rng(0))) == [0, 1, 2, 3, 4]


def test_packed_to_avmnist_round_trip(tmp_path: Path) -> None:
    samples = pack(tmp_path / "packed")
    out = tmp_path / "avmnist"
    summary = packed_to_avmnist(tmp_path / "packed", out,
                                rows={"train": None, "valid": None, "test": None})
    assert summary["valid_start"] == 7
    assert summary["rows"] == COUNTS
    image = np.load(out / "image" / "train_data.npy")
    audio = np.load(out / "audio" / "train_data.npy")
    assert image.shape == (10, 784)
    assert image.dtype == np.float32  # float: MultiBench divides the images in place
    assert audio.shape == (10, 112, 112)
    assert audio.dtype == np.float32
    for array in (image, audio):
        assert array.min() >= 0
        assert array.max() <= 255
    first = samples["train"][0]
    expected = ((first.inputs["image"].numpy() * 0.5 + 0.5) * 255).reshape(-1)
    np.testing.assert_allclose(image[0], expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(audio[7], spectrogram_to_avmnist(samples["valid"][0].inputs["audio"].numpy()))
    labels = np.load(out / "train_labels.npy")
    assert list(labels) == [int(s.label) for s in samples["train"] + samples["valid"]]

    # mmfurnace reads the split boundary from layout.json; MultiBench-style scaling gives back x/255
    plain = dict(image_mean=0.0, image_std=1.0, audio_norm="none")
    assert [len(AVMNIST(out, s, **plain)) for s in ("train", "valid", "test")] == [7, 3, 4]
    test = AVMNIST(out, "test", **plain)
    torch.testing.assert_close(test[2].inputs["image"],
                               samples["test"][2].inputs["image"] * 0.5 + 0.5, rtol=1e-5, atol=1e-5)
    assert int(test[2].label) == int(samples["test"][2].label)


def test_multibench_sizes_repeat_rows(tmp_path: Path) -> None:
    pack(tmp_path / "packed")
    summary = packed_to_avmnist(tmp_path / "packed", tmp_path / "mb",
                                rows={"train": 20, "valid": 5, "test": 9})
    assert summary["valid_start"] == 20
    labels = np.load(tmp_path / "mb" / "train_labels.npy")
    assert labels.shape == (25,)
    assert np.load(tmp_path / "mb" / "audio" / "test_data.npy").shape == (9, 112, 112)
    assert len(AVMNIST(tmp_path / "mb", "valid")) == 5


def test_refuses_mfcc_audio_and_an_existing_folder(tmp_path: Path) -> None:
    pack(tmp_path / "mfcc", features="mfcc", mels=20)
    with pytest.raises(InputError, match="features=logmel"):
        packed_to_avmnist(tmp_path / "mfcc", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    pack(tmp_path / "packed")
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="already exists"):
        packed_to_avmnist(tmp_path / "packed", tmp_path / "out")
    packed_to_avmnist(tmp_path / "packed", tmp_path / "out", overwrite=True,
                      rows={"train": None, "valid": None, "test": None})
    assert (tmp_path / "out" / "layout.json").is_file()
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temporary folder left behind
