"""MM-IMDb read from its published ``multimodal_imdb.hdf5`` (Arevalo et al., 2017).

Datasets in the file (N = 25959):
    features      (N, 300)            float  averaged word2vec of the plot      -> text
    vgg_features  (N, 4096)           float  VGG-16 fc7 of the poster            -> image
    images        (N, 3, 256, 160)    uint8  the poster itself                   -> image
    genres        (N, 23)             int    multi-hot genre labels
    (``sequences``, ``imdb_ids``, ... are present and not used here.)

Splits are row ranges, as MultiBench uses them: train [0, 15552), valid [15552, 18160),
test [18160, 25959).

Samples: text (1, 300) float32 (a length-1 sequence of features), image (4096,) float32 from
``vgg_features`` or (3, 256, 160) float32 in 0..1 from ``images`` (``image_source``), label
(23,) float32 multi-hot. The file is opened lazily in each worker process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

FILENAME = "multimodal_imdb.hdf5"
SPLIT_ROWS: dict[str, tuple[int, int]] = {
    "train": (0, 15552),
    "valid": (15552, 18160),
    "test": (18160, 25959),
}
# Genre order of the hdf5 "genres" columns (by frequency, as in the MM-IMDb release).
GENRES: tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
    "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History",
    "Music", "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir",
)  # fmt: skip
TEXT_DIM = 300
MMIMDB_MODALITIES = ("image", "text")
ImageSource = Literal["vgg_features", "images"]
# Trailing shape each dataset must have (after the row axis).
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "features": (TEXT_DIM,),
    "vgg_features": (4096,),
    "images": (3, 256, 160),
    "genres": (len(GENRES),),
}


def resolve_mmimdb_path(root: Path) -> Path:
    """``root`` itself when it is a file, else ``root/multimodal_imdb.hdf5``."""
    root = Path(root)
    return root / FILENAME if root.is_dir() else root


class MMIMDb(Dataset):
    """One split of MM-IMDb from its hdf5 file (see module docstring).

    ``split_rows`` overrides the row ranges (tests use tiny files); ``modalities`` restricts
    which of ("image", "text") samples carry.
    """

    def __init__(
        self,
        path: Path,
        split: str,
        *,
        image_source: ImageSource = "vgg_features",
        split_rows: Mapping[str, tuple[int, int]] | None = None,
        modalities: Sequence[str] = MMIMDB_MODALITIES,
    ) -> None:
        rows = dict(SPLIT_ROWS if split_rows is None else split_rows)
        if split not in rows:
            raise InputError(f"MM-IMDb split {split!r}; use one of {', '.join(rows)}")
        if image_source not in ("vgg_features", "images"):
            raise InputError(f"image_source {image_source!r}; use 'vgg_features' or 'images'")
        unknown = sorted(set(modalities) - set(MMIMDB_MODALITIES))
        if unknown or not modalities:
            raise InputError(
                f"MM-IMDb has modalities {', '.join(MMIMDB_MODALITIES)}; got {list(modalities)}"
            )
        self.path = resolve_mmimdb_path(path)
        self.split = split
        self.image_source = image_source
        self.modalities = sorted(modalities)
        self._keys = {"text": "features", "image": image_source}
        self._start, self._stop = rows[split]
        # Validate now and read the (small) labels, then close: an h5py handle must not be
        # shared across forked workers, so each process opens its own in _open().
        with self._open_file() as fh:
            n = self._check(fh)
            if not 0 <= self._start <= self._stop <= n:
                raise InputError(
                    f"{self.path}: split {split!r} is rows {self._start}..{self._stop}, but the "
                    f"file has {n} rows"
                )
            self._labels = np.asarray(fh["genres"][self._start : self._stop], dtype=np.float32)
        if not np.isin(self._labels, (0.0, 1.0)).all():
            raise InputError(f"{self.path}: dataset 'genres' must be multi-hot (0/1)")
        self._file: Any = None

    def _open_file(self) -> Any:
        import h5py  # only this reader needs it; keeps `import mmfurnace.data` light

        if not self.path.is_file():
            raise InputError(f"{self.path}: MM-IMDb file not found (expected {FILENAME})")
        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise InputError(f"{self.path}: not a readable hdf5 file ({err})") from None

    def _check(self, fh: Any) -> int:
        needed = ["genres", *(self._keys[m] for m in self.modalities)]
        n: int | None = None
        for key in needed:
            if key not in fh:
                raise InputError(f"{self.path}: dataset {key!r} missing; has {sorted(fh.keys())}")
            shape = tuple(fh[key].shape)
            if shape[1:] != EXPECTED_SHAPES[key]:
                raise InputError(
                    f"{self.path}: dataset {key!r} has shape {shape}, expected "
                    f"(N, {', '.join(map(str, EXPECTED_SHAPES[key]))})"
                )
            if n is not None and shape[0] != n:
                raise InputError(f"{self.path}: dataset {key!r} has {shape[0]} rows, 'genres' {n}")
            n = shape[0]
        assert n is not None
        return n

    @property
    def info(self) -> DatasetInfo:
        shapes: dict[str, tuple[int | None, ...]] = {
            "text": (1, TEXT_DIM),
            "image": EXPECTED_SHAPES[self.image_source],
        }
        return DatasetInfo(
            modalities=tuple(self.modalities),
            num_classes=len(GENRES),
            multilabel=True,
            class_names=GENRES,
            input_shapes={m: shapes[m] for m in self.modalities},
            input_dtypes={m: "float32" for m in self.modalities},
            extra={"source": "mmimdb", "path": str(self.path), "image_source": self.image_source},
        )

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        row = self._start + i
        fh = self._open()
        inputs: dict[str, torch.Tensor] = {}
        if "text" in self.modalities:
            text = np.asarray(fh["features"][row], dtype=np.float32)
            inputs["text"] = torch.from_numpy(text.reshape(1, TEXT_DIM))
        if "image" in self.modalities:
            image = np.asarray(fh[self.image_source][row], dtype=np.float32)
            if self.image_source == "images":
                image /= 255.0  # posters are stored as uint8 pixels
            inputs["image"] = torch.from_numpy(image)
        label = torch.from_numpy(self._labels[i].copy())
        return Sample(inputs=inputs, label=label, meta={"id": f"row{row}"})

    def _open(self) -> Any:
        if self._file is None:
            self._file = self._open_file()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None  # each worker opens its own handle
        return state
