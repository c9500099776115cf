"""AV-MNIST read in MultiBench's published layout.

    root/image/train_data.npy   (60000, 784)      MNIST digits, pixel values 0..255
    root/image/test_data.npy    (10000, 784)
    root/audio/train_data.npy   (60000, 112, 112) spectrograms of spoken digits, 0..255
    root/audio/test_data.npy    (10000, 112, 112)
    root/train_labels.npy       (60000,)          digit 0..9
    root/test_labels.npy        (10000,)

Splits follow MultiBench's ``get_dataloader``: train = train rows ``[0, VALID_START)``,
valid = train rows ``[VALID_START, end)``, test = all test rows. Like MultiBench (its
``normalize_image``/``normalize_audio`` defaults), both modalities are divided by 255 whether
stored as uint8 or float. Images of shape (N, 28, 28) are accepted too.

Samples: image (1, 28, 28) float32, audio (112, 112) float32 as (frames, features), label ()
int64. Arrays are memory-mapped, opened lazily in each worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

VALID_START = 55_000
NUM_CLASSES = 10
IMAGE_SIDE = 28
AUDIO_SHAPE = (112, 112)
AVMNIST_MODALITIES = ("audio", "image")
SPLITS = ("train", "valid", "test")


def avmnist_files(root: Path, part: str) -> dict[str, Path]:
    """Paths of the image, audio and label arrays of ``part`` ("train" or "test")."""
    root = Path(root)
    return {
        "image": root / "image" / f"{part}_data.npy",
        "audio": root / "audio" / f"{part}_data.npy",
        "label": root / f"{part}_labels.npy",
    }


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(
            f"{path}: AV-MNIST file not found; expected MultiBench's layout "
            "(image/{train,test}_data.npy, audio/{train,test}_data.npy, {train,test}_labels.npy)"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array ({err})") from None


def _check_shapes(files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    image, audio, label = arrays["image"], arrays["audio"], arrays["label"]
    if image.shape[1:] not in ((IMAGE_SIDE * IMAGE_SIDE,), (IMAGE_SIDE, IMAGE_SIDE)):
        raise InputError(
            f"{files['image']}: shape {image.shape}, expected (N, 784) (or (N, 28, 28))"
        )
    if audio.shape[1:] != AUDIO_SHAPE:
        raise InputError(f"{files['audio']}: shape {audio.shape}, expected (N, 112, 112)")
    if label.ndim == 2 and label.shape[1] == 1:
        label = label.reshape(-1)
    if label.ndim != 1:
        raise InputError(f"{files['label']}: shape {label.shape}, expected (N,)")
    n = image.shape[0]
    for key, arr in (("audio", audio), ("label", label)):
        if arr.shape[0] != n:
            raise InputError(
                f"{files[key]}: has {arr.shape[0]} rows but {files['image']} has {n}; "
                "the image, audio and label files must have one row per sample"
            )
    values = np.asarray(label)
    if values.size and (values.min() < 0 or values.max() >= NUM_CLASSES):
        raise InputError(f"{files['label']}: labels must be digits 0..9")


class AVMNIST(Dataset):
    """One split of AV-MNIST from MultiBench's .npy files (see module docstring).

    ``valid_start`` moves the train/valid boundary (tests use tiny files). ``modalities``
    restricts which of ("audio", "image") samples carry.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        valid_start: int = VALID_START,
        modalities: Sequence[str] = AVMNIST_MODALITIES,
    ) -> None:
        if split not in SPLITS:
            raise InputError(f"AV-MNIST split {split!r}; use one of {', '.join(SPLITS)}")
        unknown = sorted(set(modalities) - set(AVMNIST_MODALITIES))
        if unknown or not modalities:
            raise InputError(
                f"AV-MNIST has modalities {', '.join(AVMNIST_MODALITIES)}; got {list(modalities)}"
            )
        self.root = Path(root)
        self.split = split
        self.modalities = sorted(modalities)
        self.files = avmnist_files(self.root, "test" if split == "test" else "train")
        arrays = {k: _open(p) for k, p in self.files.items()}
        _check_shapes(self.files, arrays)
        n = arrays["image"].shape[0]
        if split == "test":
            self._start, self._stop = 0, n
        else:
            if not 0 < valid_start < n:
                raise InputError(
                    f"{self.files['image']}: {n} training rows, so the valid split cannot "
                    f"start at row {valid_start}"
                )
            self._start, self._stop = (0, valid_start) if split == "train" else (valid_start, n)
        # Labels are small: read this split's once instead of through the map every item.
        self._labels = (
            np.asarray(arrays["label"]).reshape(-1)[self._start : self._stop].astype(np.int64)
        )
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def info(self) -> DatasetInfo:
        shapes: dict[str, tuple[int | None, ...]] = {
            "image": (1, IMAGE_SIDE, IMAGE_SIDE),
            "audio": AUDIO_SHAPE,
        }
        return DatasetInfo(
            modalities=tuple(self.modalities),
            num_classes=NUM_CLASSES,
            multilabel=False,
            class_names=tuple(str(d) for d in range(NUM_CLASSES)),
            input_shapes={m: shapes[m] for m in self.modalities},
            input_dtypes={m: "float32" for m in self.modalities},
            extra={"source": "avmnist", "root": str(self.root)},
        )

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        row = self._start + i
        arrays = self._open()
        inputs: dict[str, torch.Tensor] = {}
        if "image" in arrays:
            pixels = np.asarray(arrays["image"][row], dtype=np.float32) / 255.0
            inputs["image"] = torch.from_numpy(pixels.reshape(1, IMAGE_SIDE, IMAGE_SIDE))
        if "audio" in arrays:
            inputs["audio"] = torch.from_numpy(
                np.asarray(arrays["audio"][row], dtype=np.float32) / 255.0
            )
        label = torch.tensor(int(self._labels[i]), dtype=torch.int64)
        return Sample(inputs=inputs, label=label, meta={"id": f"{self.split}{row}"})

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {m: _open(self.files[m]) for m in self.modalities}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are re-opened in each worker instead of being pickled as full copies.
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state
