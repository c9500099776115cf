"""Reading a packed cache: its header, its index and memory-mapped arrays, as a Dataset.
The layout is described in :mod:`mmfurnace.data.cache`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

FORMAT_NAME = "mmfurnace-packed"
FORMAT_VERSION = 1
SPLIT_ORDER = ("train", "valid", "test")
REBUILD_HINT = "rebuild it with `mmfurnace data build ...`"


# --------------------------------------------------------------------------- reading


def read_header(root: Path) -> dict[str, Any]:
    """Read and check ``root/info.json``; raise InputError saying how to rebuild."""
    root = Path(root)
    path = root / "info.json"
    if not path.is_file():
        what = "does not exist" if not root.exists() else "is not a complete packed cache"
        raise InputError(f"{root}: {what} (no info.json); {REBUILD_HINT}")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err}); {REBUILD_HINT}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise InputError(f"{path}: not an mmfurnace packed cache; {REBUILD_HINT}")
    if header.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: cache format version {header.get('version')!r}, this mmfurnace reads "
            f"version {FORMAT_VERSION}; {REBUILD_HINT}"
        )
    for key in ("info", "splits", "counts", "num_samples", "arrays"):
        if key not in header:
            raise InputError(f"{path}: field {key!r} missing; {REBUILD_HINT}")
    return header


def load_index(root: Path, header: dict[str, Any]) -> dict[str, np.ndarray]:
    """index.npz as arrays, each checked present and one row per sample; InputError otherwise."""
    path = root / "index.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            index = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: missing or corrupt ({err}); {REBUILD_HINT}") from None
    n = int(header["num_samples"])
    needed = ["labels", "split", "ids"]
    for m in header["arrays"]:
        needed += [f"{m}_offset", f"{m}_length", f"{m}_present"]
    for key in needed:
        if key not in index:
            raise InputError(f"{path}: array {key!r} missing; {REBUILD_HINT}")
        if index[key].shape[:1] != (n,):
            raise InputError(
                f"{path}: array {key!r} has {index[key].shape[:1]} rows, info.json says {n}; "
                f"{REBUILD_HINT}"
            )
    return index


def open_array(root: Path, modality: str, expected: dict[str, Any]) -> np.ndarray:
    """``<modality>.npy`` memory-mapped, checked against the dtype and shape info.json expects."""
    path = root / f"{modality}.npy"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: missing or corrupt ({err}); {REBUILD_HINT}") from None
    if list(array.shape) != list(expected["shape"]) or array.dtype.str != expected["dtype"]:
        raise InputError(
            f"{path}: holds {array.dtype.str} {tuple(array.shape)}, info.json says "
            f"{expected['dtype']} {tuple(expected['shape'])}; {REBUILD_HINT}"
        )
    return array


class PackedDataset(Dataset):
    """One split of a packed cache. Arrays are memory-mapped on first access in each process.

    ``__getitem__`` returns a Sample whose ``inputs`` hold only the present modalities
    (restricted to ``modalities`` when given), shapes as in :mod:`mmfurnace.data.batch`.
    Picklable: worker processes re-open the memory maps themselves.
    """

    def __init__(self, root: Path, split: str, *, modalities: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.split = split
        header = read_header(self.root)
        index = load_index(self.root, header)
        if split not in header["splits"]:
            raise InputError(
                f"{self.root}: no split {split!r} in this cache; it has "
                f"{', '.join(header['splits']) or 'no samples'}"
            )
        info = DatasetInfo.from_dict(header["info"])
        keep = sorted(info.modalities) if modalities is None else sorted(modalities)
        unknown = set(keep) - set(header["arrays"])
        if unknown:
            raise InputError(
                f"{self.root}: modalities {sorted(unknown)} are not in this cache "
                f"(it has {sorted(header['arrays'])})"
            )
        if modalities is not None:
            info = _restrict_info(info, keep)
        self._info = info
        self._modalities = keep
        self._expected = {m: header["arrays"][m] for m in keep}
        split_id = header["splits"].index(split)
        rows = np.flatnonzero(index["split"] == split_id)
        # Keep only this split's rows: small, and it avoids keeping the npz open.
        self._rows = rows
        self._ids = index["ids"][rows]
        self._labels = index["labels"][rows]
        self._offset = {m: index[f"{m}_offset"][rows] for m in keep}
        self._length = {m: index[f"{m}_length"][rows] for m in keep}
        self._present = {m: index[f"{m}_present"][rows] for m in keep}
        for m in keep:  # fail now, not in a worker, when an array is missing or the wrong size
            open_array(self.root, m, self._expected[m])
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        arrays = self._open()
        inputs: dict[str, torch.Tensor] = {}
        for m in self._modalities:
            if not self._present[m][i]:
                continue
            start = int(self._offset[m][i])
            stop = start + int(self._length[m][i])
            # np.array copies out of the read-only map, so the tensor is writable and owned.
            inputs[m] = torch.from_numpy(np.array(arrays[m][start:stop]))
        label = torch.from_numpy(np.array(self._labels[i]))
        return Sample(inputs=inputs, label=label, meta={"id": str(self._ids[i])})

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {
                m: open_array(self.root, m, self._expected[m]) for m in self._modalities
            }
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        # A pickled memmap would copy the whole array; workers re-open it instead.
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state


def _restrict_info(info: DatasetInfo, keep: Sequence[str]) -> DatasetInfo:
    return DatasetInfo(
        modalities=tuple(keep),
        num_classes=info.num_classes,
        multilabel=info.multilabel,
        class_names=info.class_names,
        input_shapes={m: s for m, s in info.input_shapes.items() if m in keep},
        input_dtypes={m: d for m, d in info.input_dtypes.items() if m in keep},
        vocab_size=info.vocab_size if "text" in keep else None,
        extra=dict(info.extra),
    )
