"""Verifying a packed cache end to end: index bounds, labels, finite values, class balance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.data.cache_read import REBUILD_HINT, load_index, open_array, read_header
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

# --------------------------------------------------------------------------- verifying


def verify_packed(root: Path) -> dict[str, Any]:
    """Check a cache end to end; return a summary or raise InputError naming the problem.

    Returns ``{"root", "num_samples", "splits": {split: count}, "class_balance":
    {split: {class_name: count}}, "presence": {modality: fraction present},
    "arrays": {modality: {"dtype", "shape"}}}``.
    """
    root = Path(root)
    header = read_header(root)
    index = load_index(root, header)
    info = DatasetInfo.from_dict(header["info"])
    n = int(header["num_samples"])
    names: list[str] = list(header["splits"])
    split = index["split"]
    if n and (split.min() < 0 or split.max() >= len(names)):
        raise InputError(f"{root}/index.npz: split ids outside 0..{len(names) - 1}; {REBUILD_HINT}")
    counts = {name: int((split == i).sum()) for i, name in enumerate(names)}
    if counts != {k: int(v) for k, v in header["counts"].items()}:
        raise InputError(f"{root}: split counts {counts} differ from info.json {header['counts']}")
    _verify_labels(root, index["labels"], info)
    presence: dict[str, float] = {}
    for m, expected in header["arrays"].items():
        _verify_modality(root, m, expected, index)
        presence[m] = float(index[f"{m}_present"].mean()) if n else 0.0
    return {
        "root": str(root),
        "num_samples": n,
        "splits": counts,
        "class_balance": _class_balance(index["labels"], split, names, info),
        "presence": presence,
        "arrays": header["arrays"],
    }


def _verify_labels(root: Path, labels: np.ndarray, info: DatasetInfo) -> None:
    where = f"{root}/index.npz labels"
    if info.multilabel:
        if labels.ndim != 2 or labels.shape[1] != info.num_classes:
            raise InputError(f"{where}: shape {labels.shape}, expected (n, {info.num_classes})")
        if not np.isin(labels, (0.0, 1.0)).all():
            raise InputError(f"{where}: multi-hot labels must be 0 or 1")
        return
    bad = np.flatnonzero((labels < 0) | (labels >= info.num_classes))
    if bad.size:
        raise InputError(
            f"{where}: sample {int(bad[0])} has label {int(labels[bad[0]])}, outside "
            f"0..{info.num_classes - 1}; {REBUILD_HINT}"
        )


def _verify_modality(
    root: Path, m: str, expected: dict[str, Any], index: dict[str, np.ndarray]
) -> None:
    array = open_array(root, m, expected)
    offset, length, present = index[f"{m}_offset"], index[f"{m}_length"], index[f"{m}_present"]
    rows = array.shape[0]
    bad = np.flatnonzero((offset < 0) | (length < 0) | (offset + length > rows))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{root}/index.npz: {m} of sample {i} spans rows {int(offset[i])}.."
            f"{int(offset[i] + length[i])}, but {m}.npy has {rows}; {REBUILD_HINT}"
        )
    if not np.array_equal(present, length > 0):
        raise InputError(f"{root}/index.npz: {m}_present disagrees with {m}_length; {REBUILD_HINT}")
    if np.issubdtype(array.dtype, np.floating):
        chunk = 1 << 16  # rows per read, so a large cache is never loaded at once
        for start in range(0, rows, chunk):
            if not np.isfinite(array[start : start + chunk]).all():
                raise InputError(f"{root}/{m}.npy: NaN or inf near row {start}; {REBUILD_HINT}")


def _class_name(info: DatasetInfo, k: int) -> str:
    return info.class_names[k] if k < len(info.class_names) else str(k)


def _class_balance(
    labels: np.ndarray, split: np.ndarray, names: Sequence[str], info: DatasetInfo
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for i, name in enumerate(names):
        rows = labels[split == i]
        if info.multilabel:
            per_class = (
                rows.sum(axis=0).astype(np.int64) if rows.size else np.zeros(info.num_classes)
            )
        else:
            per_class = np.bincount(rows, minlength=info.num_classes)
        out[name] = {_class_name(info, k): int(per_class[k]) for k in range(info.num_classes)}
    return out
