"""AV-MNIST reader on tiny files in MultiBench's layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfurnace.data.avmnist import AVMNIST
from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import build_dataset
from mmfurnace.errors import ConfigError, InputError


def write_avmnist(root: Path, n_train: int = 10, n_test: int = 4, dtype: str = "float32") -> dict:
    """Write the six .npy files with values 0..255 the way MultiBench ships them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        image = rng.integers(0, 256, size=(n, 784)).astype(dtype)
        audio = rng.integers(0, 256, size=(n, 112, 112)).astype(dtype)
        labels = rng.integers(0, 10, size=(n,))
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        np.save(root / "image" / f"{part}_data.npy", image)
        np.save(root / "audio" / f"{part}_data.npy", audio)
        np.save(root / f"{part}_labels.npy", labels)
        arrays[part] = (image, audio, labels)
    return arrays


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_splits_and_scaling(tmp_path: Path, dtype: str) -> None:
    arrays = write_avmnist(tmp_path, dtype=dtype)
    train = AVMNIST(tmp_path, "train", valid_start=7)
    valid = AVMNIST(tmp_path, "valid", valid_start=7)
    test = AVMNIST(tmp_path, "test", valid_start=7)
    assert (len(train), len(valid), len(test)) == (7, 3, 4)

    image, audio, labels = arrays["train"]
    sample = valid[1]  # row 8 of the train files
    assert sample.inputs["image"].shape == (1, 28, 28)
    assert sample.inputs["image"].dtype == torch.float32
    expected_image = torch.from_numpy(image[8].astype(np.float32).reshape(1, 28, 28) / 255)
    torch.testing.assert_close(sample.inputs["image"], expected_image)
    assert sample.inputs["audio"].shape == (112, 112)
    torch.testing.assert_close(
        sample.inputs["audio"], torch.from_numpy(audio[8].astype(np.float32) / 255)
    )
    assert sample.label.item() == labels[8]
    assert sample.label.dtype == torch.int64
    assert float(sample.inputs["image"].max()) <= 1.0

    assert test[3].label.item() == arrays["test"][2][3]
    assert train.info.num_classes == 10
    assert train.info.input_shapes["image"] == (1, 28, 28)


def test_wrong_shape_names_file_and_expected_shape(tmp_path: Path) -> None:
    write_avmnist(tmp_path)
    np.save(tmp_path / "audio" / "train_data.npy", np.zeros((10, 112, 100), dtype=np.float32))
    with pytest.raises(
        InputError, match=r"audio/train_data\.npy: shape \(10, 112, 100\), expected \(N, 112, 112\)"
    ):
        AVMNIST(tmp_path, "train", valid_start=7)
    np.save(tmp_path / "image" / "test_data.npy", np.zeros((4, 780), dtype=np.float32))
    with pytest.raises(
        InputError, match=r"image/test_data\.npy: shape \(4, 780\), expected \(N, 784\)"
    ):
        AVMNIST(tmp_path, "test")


def test_missing_file_and_row_mismatch(tmp_path: Path) -> None:
    write_avmnist(tmp_path)
    np.save(tmp_path / "train_labels.npy", np.zeros(9, dtype=np.int64))
    with pytest.raises(InputError, match=r"train_labels\.npy: has 9 rows"):
        AVMNIST(tmp_path, "valid", valid_start=7)
    (tmp_path / "test_labels.npy").unlink()
    with pytest.raises(InputError, match=r"test_labels\.npy: AV-MNIST file not found"):
        AVMNIST(tmp_path, "test")
    write_avmnist(tmp_path)
    with pytest.raises(InputError, match="cannot\\s+start at row 55000"):
        AVMNIST(tmp_path, "valid")  # the published boundary does not fit 10 rows


def test_pickles_and_restricts_modalities(tmp_path: Path) -> None:
    write_avmnist(tmp_path)
    ds = AVMNIST(tmp_path, "train", valid_start=7, modalities=["image"])
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert sorted(clone[2].inputs) == ["image"]
    torch.testing.assert_close(clone[2].inputs["image"], ds[2].inputs["image"])


def test_build_dataset_keeps_the_modalities_it_has(tmp_path: Path) -> None:
    write_avmnist(tmp_path, n_train=10, n_test=3)
    cfg = DataConfig(dataset="avmnist", root=tmp_path)  # default modalities include text
    ds = build_dataset(cfg, "test")
    assert ds.info.modalities == ("audio", "image")
    with pytest.raises(ConfigError, match="has only audio, image"):
        build_dataset(DataConfig(dataset="avmnist", root=tmp_path, modalities=["text"]), "test")
