"""MM-IMDb reader on a tiny hdf5 in the published layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import build_dataset
from mmfurnace.data.loader import make_loader
from mmfurnace.data.mmimdb import FILENAME, GENRES, MMIMDb
from mmfurnace.errors import InputError

ROWS = {"train": (0, 6), "valid": (6, 8), "test": (8, 11)}


def write_mmimdb(path: Path, n: int = 11) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {
        "features": rng.standard_normal((n, 300)).astype(np.float32),
        "vgg_features": rng.random((n, 4096)).astype(np.float32),
        "images": rng.integers(0, 256, size=(n, 3, 256, 160), dtype=np.uint8),
        "genres": rng.integers(0, 2, size=(n, 23)).astype(np.int64),
        "sequences": rng.integers(0, 100, size=(n, 20)).astype(np.int64),
    }
    with h5py.File(path, "w") as fh:
        for key, value in data.items():
            fh.create_dataset(key, data=value)
    return data


def test_vgg_features_split_and_labels(tmp_path: Path) -> None:
    data = write_mmimdb(tmp_path / FILENAME)
    valid = MMIMDb(tmp_path, "valid", split_rows=ROWS)  # folder -> the file inside
    assert len(valid) == 2
    sample = valid[1]  # row 7
    assert sample.inputs["text"].shape == (1, 300)
    torch.testing.assert_close(sample.inputs["text"][0], torch.from_numpy(data["features"][7]))
    assert sample.inputs["image"].shape == (4096,)
    torch.testing.assert_close(sample.inputs["image"], torch.from_numpy(data["vgg_features"][7]))
    assert sample.label.dtype == torch.float32
    assert sample.label.shape == (23,)
    torch.testing.assert_close(sample.label, torch.from_numpy(data["genres"][7].astype(np.float32)))
    info = valid.info
    assert info.multilabel
    assert info.num_classes == 23
    assert info.class_names == GENRES
    assert info.input_shapes == {"image": (4096,), "text": (1, 300)}


def test_raw_posters(tmp_path: Path) -> None:
    data = write_mmimdb(tmp_path / "m.hdf5")
    test = MMIMDb(tmp_path / "m.hdf5", "test", image_source="images", split_rows=ROWS)
    image = test[2].inputs["image"]  # row 10
    assert image.shape == (3, 256, 160)
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(data["images"][10].astype(np.float32) / 255))


def test_published_boundaries_do_not_fit_a_tiny_file(tmp_path: Path) -> None:
    write_mmimdb(tmp_path / FILENAME)
    with pytest.raises(
        InputError, match=r"split 'train' is rows 0..15552, but the file has 11 rows"
    ):
        MMIMDb(tmp_path, "train")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="MM-IMDb file not found"):
        MMIMDb(tmp_path, "train", split_rows=ROWS)
    (tmp_path / FILENAME).write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="not a readable hdf5 file"):
        MMIMDb(tmp_path, "train", split_rows=ROWS)
    with h5py.File(tmp_path / "bad.hdf5", "w") as fh:
        fh["features"] = np.zeros((11, 299), dtype=np.float32)
        fh["vgg_features"] = np.zeros((11, 4096), dtype=np.float32)
        fh["genres"] = np.zeros((11, 23))
    with pytest.raises(
        InputError,
        match=r"bad\.hdf5: dataset 'features' has shape \(11, 299\), expected \(N, 300\)",
    ):
        MMIMDb(tmp_path / "bad.hdf5", "train", split_rows=ROWS)
    with pytest.raises(InputError, match="dataset 'images' missing"):
        MMIMDb(tmp_path / "bad.hdf5", "train", split_rows=ROWS, image_source="images")


def test_workers_open_their_own_handle(tmp_path: Path) -> None:
    write_mmimdb(tmp_path / FILENAME)
    ds = MMIMDb(tmp_path, "train", split_rows=ROWS)
    ds[0]  # opens a handle in this process; it must not travel to workers
    assert pickle.loads(pickle.dumps(ds))._file is None
    loader = make_loader(
        ds, modalities=["image", "text"], batch_size=4, shuffle=False, num_workers=2
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2]
    assert batches[0].inputs["text"].shape == (4, 1, 300)
    assert batches[0].labels.shape == (4, 23)
    torch.testing.assert_close(batches[1].inputs["image"][1], ds[5].inputs["image"])


def test_build_dataset_uses_published_boundaries(tmp_path: Path) -> None:
    # Full-size datasets that are never written stay unallocated, so the file is tiny.
    with h5py.File(tmp_path / FILENAME, "w") as fh:
        fh.create_dataset("features", shape=(25959, 300), dtype="f4", chunks=(64, 300))
        fh.create_dataset("genres", shape=(25959, 23), dtype="i8", chunks=(64, 23))
        fh["features"][18160] = np.arange(300, dtype=np.float32)
        fh["genres"][18160, 4] = 1
    cfg = DataConfig(dataset="mmimdb", root=tmp_path, modalities=["audio", "text"])
    test = build_dataset(cfg, "test")
    assert len(test) == 25959 - 18160
    assert test.info.modalities == ("text",)
    first = test[0]
    torch.testing.assert_close(first.inputs["text"][0], torch.arange(300, dtype=torch.float32))
    assert first.label.nonzero().flatten().tolist() == [4]
    assert len(build_dataset(cfg, "train")) == 15552
    assert (tmp_path / FILENAME).stat().st_size < 2_000_000
