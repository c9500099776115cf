"""AV-MNIST read in MultiBench's published layout.

    root/image/train_data.npy   (60000, 784)      MNIST digits, pixel values 0..255
    root/image/test_data.npy    (10000, 784)
    root/audio/train_data.npy   (60000, 112, 112) spectrograms of spoken digits, 0..255
    root/audio/test_data.npy    (10000, 112, 112)
    root/train_labels.npy       (60000,)          digit 0..9
    root/test_labels.npy        (10000,)

Splits follow MultiBench's ``get_dataloader``: train = train rows ``[0, valid_start)``,
valid = train rows ``[valid_start, end)``, test = all test rows. ``valid_start`` is MultiBench's
55,000 unless the files carry a ``layout.json`` (written by
:func:`mmfurnace.data.avmnist_write.packed_to_avmnist`) that records another, or it is given
(``data.valid_start``). Images of shape (N, 28, 28) are accepted too.

Scaling. Images: ``(x / 255 - mean) / std`` (``data.image.mean/std``; 0 and 1 give
MultiBench's plain ``x / 255``). Audio: ``x / 255``, then each of the 112 mel bands is
standardised with the mean and std of that band over (a fixed sample of) the train rows
(``audio_norm="bands"``, the default; ``"none"`` keeps MultiBench's plain ``x / 255``). Why:
a 0..255 spectrogram whose silence is 0 puts every value on one side of zero with a large
shared offset; mmfurnace's encoders normalise each position over its channels (no batch
statistics, so padding and absent rows cannot leak), which cannot remove a per-channel
offset the way MultiBench's BatchNorm does, and the audio branch then learned nothing
(chance after 20 epochs alone; README, AV-MNIST).

Samples: image (1, 28, 28) float32, audio (112, 112) float32 as (frames, features), label ()
int64. Arrays are memory-mapped, opened lazily in each worker process.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
LAYOUT_FILE = "layout.json"
STATS_ROWS = 4096  # train rows (evenly spaced) that the audio band statistics are taken from
AudioNorm = Literal["bands", "none"]


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

    ``valid_start`` moves the train/valid boundary (None: the files' ``layout.json``, else
    55,000). ``modalities`` restricts which of ("audio", "image") samples carry.
    ``image_mean``/``image_std`` and ``audio_norm`` set the scaling (module docstring).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        valid_start: int | None = None,
        modalities: Sequence[str] = AVMNIST_MODALITIES,
        image_mean: float = 0.5,
        image_std: float = 0.5,
        audio_norm: AudioNorm = "bands",
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
        valid_start = default_valid_start(self.root) if valid_start is None else valid_start
        train_images = avmnist_files(self.root, "train")["image"]
        if split != "test" or (train_images.is_file() and "audio" in self.modalities):
            # the test split needs the train files too, for the audio band statistics
            n_train = n if split != "test" else _open(train_images).shape[0]
            if not 0 < valid_start < n_train:
                raise InputError(
                    f"{train_images}: {n_train} training rows, so the valid split cannot start "
                    f"at row {valid_start}; set data.valid_start (AVMNIST(valid_start=...)) to "
                    f"the first validation row, between 1 and {n_train - 1}"
                )
        self.valid_start = valid_start
        if split == "test":
            self._start, self._stop = 0, n
        else:
            self._start, self._stop = (0, valid_start) if split == "train" else (valid_start, n)
        if image_std <= 0:
            raise InputError(f"AV-MNIST image_std must be positive, got {image_std}")
        if audio_norm not in ("bands", "none"):
            raise InputError(f"AV-MNIST audio_norm {audio_norm!r}; use 'bands' or 'none'")
        self.image_mean, self.image_std, self.audio_norm = image_mean, image_std, audio_norm
        self._band_stats = (
            band_stats(self.root, valid_start)
            if audio_norm == "bands" and "audio" in self.modalities
            else None
        )
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
            extra={"source": "avmnist", "root": str(self.root), "valid_start": self.valid_start,
                   "image_mean": self.image_mean, "image_std": self.image_std,
                   "audio_norm": self.audio_norm},
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
            pixels = (pixels - self.image_mean) / self.image_std
            inputs["image"] = torch.from_numpy(pixels.reshape(1, IMAGE_SIDE, IMAGE_SIDE))
        if "audio" in arrays:
            audio = np.asarray(arrays["audio"][row], dtype=np.float32) / 255.0
            if self._band_stats is not None:
                mean, std = self._band_stats
                audio = (audio - mean) / std
            inputs["audio"] = torch.from_numpy(audio)
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


def default_valid_start(root: Path) -> int:
    """The first valid row recorded in ``root/layout.json`` (files written by mmfurnace), else
    MultiBench's 55,000."""
    layout = Path(root) / LAYOUT_FILE
    if layout.is_file():
        try:
            return int(json.loads(layout.read_text())["valid_start"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{layout}: unreadable ({err}); fix or delete it") from None
    return VALID_START


def band_stats(root: Path, valid_start: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std (each (112,) float32, of ``x / 255``) over the frames of up to
    ``STATS_ROWS`` evenly spaced train rows ``[0, valid_start)``. Cached per file version."""
    path = avmnist_files(Path(root), "train")["audio"]
    stat = path.stat()
    return _band_stats(str(path.resolve()), stat.st_mtime_ns, stat.st_size, valid_start)


@functools.lru_cache(maxsize=8)
def _band_stats(
    path: str, mtime_ns: int, size: int, valid_start: int
) -> tuple[np.ndarray, np.ndarray]:
    audio = _open(Path(path))
    rows = np.unique(np.linspace(0, valid_start - 1, min(valid_start, STATS_ROWS)).astype(np.int64))
    total = np.zeros(AUDIO_SHAPE[1], dtype=np.float64)
    squares = np.zeros(AUDIO_SHAPE[1], dtype=np.float64)
    for chunk in np.array_split(rows, max(1, len(rows) // 512)):
        x = np.asarray(audio[chunk], dtype=np.float64).reshape(-1, AUDIO_SHAPE[1]) / 255.0
        total += x.sum(0)
        squares += np.square(x).sum(0)
    count = len(rows) * AUDIO_SHAPE[0]
    mean = total / count
    # A band that never varies (e.g. always silent) is only centred, never blown up.
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    std = np.where(std > 1e-3, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
