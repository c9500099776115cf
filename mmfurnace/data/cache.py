"""Packed on-disk cache of preprocessed samples, read back through memory maps.

Layout of a cache directory (format version ``FORMAT_VERSION``)::

    <root>/
      <modality>.npy   every present sample's tensor for that modality, concatenated along
                       axis 0: image (sum of channels, height, width), audio
                       (sum of frames, features), text (sum of tokens,). A sample's tensor is
                       ``array[offset : offset + length]``.
      index.npz        per sample i (all splits, in write order):
                         <modality>_offset  (samples,) int64  row where its tensor starts
                         <modality>_length  (samples,) int64  rows it spans (0 when absent)
                         <modality>_present (samples,) bool
                         labels  (samples,) int64 class index, or (samples, classes) float32
                         split   (samples,) int16 index into info.json "splits"
                         ids     (samples,) str
      info.json        {"format": "mmfurnace-packed", "version": 1, "info": DatasetInfo,
                        "splits": [...], "counts": {split: n}, "num_samples": n,
                        "arrays": {modality: {"dtype", "shape"}}}

``info.json`` is written last and the whole directory is built beside the target and swapped
into place (:func:`mmfurnace.io.atomic_dir`), so a directory at the target path that has an
``info.json`` is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.io import atomic_dir

FORMAT_NAME = "mmfurnace-packed"
FORMAT_VERSION = 1
SPLIT_ORDER = ("train", "valid", "test")
REBUILD_HINT = "rebuild it with `mmfurnace data build ...`"


# --------------------------------------------------------------------------- writing


@dataclass
class _ModalityWriter:
    """Streams one modality's tensors into a growing .npy file."""

    path: Path
    dtype: np.dtype | None = None
    trailing: tuple[int, ...] | None = None
    rows: int = 0
    handle: IO[bytes] | None = None
    header_len: int = 0
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def add(self, modality: str, tensor: torch.Tensor | None, where: str) -> None:
        if tensor is None:
            self.offsets.append(self.rows)
            self.lengths.append(0)
            return
        array = tensor.detach().cpu().numpy()
        if array.ndim == 0:
            raise InputError(f"{where}: {modality} is a scalar; expected at least one axis")
        if self.handle is None:
            self._open(array.dtype, tuple(array.shape[1:]))
        if array.dtype != self.dtype or tuple(array.shape[1:]) != self.trailing:
            raise InputError(
                f"{where}: {modality} has dtype {array.dtype} and shape {tuple(array.shape)}, "
                f"but earlier samples had dtype {self.dtype} and shape (*, "
                f"{', '.join(map(str, self.trailing or ()))}); every sample of a modality must "
                "agree except along axis 0"
            )
        assert self.handle is not None
        self.handle.write(np.ascontiguousarray(array).tobytes())
        self.offsets.append(self.rows)
        self.lengths.append(int(array.shape[0]))
        self.rows += int(array.shape[0])

    def _open(self, dtype: np.dtype, trailing: tuple[int, ...]) -> None:
        self.dtype, self.trailing = np.dtype(dtype), trailing
        self.handle = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        # numpy pads .npy headers so axis 0 can grow in place; rewritten in finish().
        self.header_len = _write_npy_header(self.handle, self.dtype, (0, *trailing))

    def finish(self, declared_dtype: str, declared_shape: Sequence[int | None]) -> dict[str, Any]:
        if self.handle is None:
            # No sample had this modality: still write an empty, well-formed array.
            trailing = tuple(int(d or 0) for d in list(declared_shape)[1:])
            self._open(np.dtype(declared_dtype), trailing)
        assert self.handle is not None
        assert self.trailing is not None
        assert self.dtype is not None
        self.handle.seek(0)
        written = _write_npy_header(self.handle, self.dtype, (self.rows, *self.trailing))
        assert written == self.header_len, "npy header changed size while growing"
        self.handle.close()
        self.handle = None
        return {"dtype": self.dtype.str, "shape": [self.rows, *self.trailing]}

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def write_packed(
    out_dir: Path,
    samples: Iterable[Sample],
    *,
    info: DatasetInfo,
    splits: Sequence[str],
    progress: Callable[[int], None] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``samples`` (streamed once) as a packed cache at ``out_dir``; return ``out_dir``.

    ``splits[i]`` names the split of the i-th sample. Samples may lack any modality of
    ``info.modalities``; ones they carry beyond it are an error. ``progress`` is called with
    the number of samples written so far. ``extra_files`` (name -> content) go into the cache
    folder too (e.g. the preprocessing settings and the tokenizer). The cache is built in a
    hidden directory beside ``out_dir`` and renamed into place only when complete; an existing
    cache there is replaced only then, so a failure at any point leaves the old cache as it was.
    """
    out_dir = Path(out_dir)
    writers: dict[str, _ModalityWriter] = {}
    try:
        with atomic_dir(out_dir) as tmp:
            writers = {m: _ModalityWriter(tmp / f"{m}.npy") for m in sorted(info.modalities)}
            labels, split_names, ids = _write_samples(samples, writers, info, splits, progress)
            arrays = {
                m: w.finish(info.input_dtypes.get(m, "float32"), info.input_shapes.get(m, (0,)))
                for m, w in writers.items()
            }
            names = _split_names(split_names)
            split_ids = np.array([names.index(s) for s in split_names], dtype=np.int16)
            index: dict[str, np.ndarray] = {
                "labels": _stack_labels(labels, info),
                "split": split_ids,
                "ids": np.array(ids, dtype=str),
            }
            for m, w in writers.items():
                index[f"{m}_offset"] = np.array(w.offsets, dtype=np.int64)
                index[f"{m}_length"] = np.array(w.lengths, dtype=np.int64)
                index[f"{m}_present"] = index[f"{m}_length"] > 0
            with open(tmp / "index.npz", "wb") as fh:
                np.savez(fh, **index)
            for name, content in (extra_files or {}).items():
                (tmp / name).write_bytes(content)
            header = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "info": info.to_dict(),
                "splits": names,
                "counts": {n: int((split_ids == i).sum()) for i, n in enumerate(names)},
                "num_samples": len(split_names),
                "arrays": arrays,
            }
            # info.json last: its presence is what marks a cache as complete.
            (tmp / "info.json").write_text(json.dumps(header, indent=2), encoding="utf-8")
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return out_dir


def pack_datasets(
    out_dir: Path,
    datasets: Mapping[str, Dataset],
    *,
    info: DatasetInfo | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Pack several split datasets (``{"train": ds, ...}``) into one cache at ``out_dir``.

    ``info`` defaults to the first dataset's ``.info``; every dataset must yield Samples.
    """
    if not datasets:
        raise InputError(f"{out_dir}: nothing to pack (no splits given)")
    if info is None:
        info = next(iter(datasets.values())).info  # type: ignore[attr-defined]
    splits: list[str] = []
    for name, ds in datasets.items():
        splits.extend([name] * len(ds))  # type: ignore[arg-type]

    def stream() -> Iterable[Sample]:
        for ds in datasets.values():
            for i in range(len(ds)):  # type: ignore[arg-type]
                yield ds[i]

    return write_packed(out_dir, stream(), info=info, splits=splits, progress=progress)


def _write_samples(
    samples: Iterable[Sample],
    writers: dict[str, _ModalityWriter],
    info: DatasetInfo,
    splits: Sequence[str],
    progress: Callable[[int], None] | None,
) -> tuple[list[torch.Tensor], list[str], list[str]]:
    labels: list[torch.Tensor] = []
    split_names: list[str] = []
    ids: list[str] = []
    for i, sample in enumerate(samples):
        where = f"sample {i}" + (f" (id {sample.meta['id']})" if "id" in sample.meta else "")
        extra = set(sample.inputs) - set(writers)
        if extra:
            raise InputError(
                f"{where}: has modality {sorted(extra)} not declared in the dataset info "
                f"({sorted(writers)})"
            )
        if i >= len(splits):
            raise InputError(f"got more samples than split names ({len(splits)})")
        for m, w in writers.items():
            w.add(m, sample.inputs.get(m), where)
        # A tensor from a DataLoader worker pins a shared-memory file descriptor while it
        # lives: keeping one per sample ran out of descriptors at 20,000 samples. Copy it.
        labels.append(torch.as_tensor(sample.label).clone())
        split_names.append(str(splits[i]))
        ids.append(str(sample.meta.get("id", i)))
        if progress is not None:
            progress(i + 1)
    if len(split_names) != len(splits):
        raise InputError(f"got {len(split_names)} samples but {len(splits)} split names")
    return labels, split_names, ids


def _stack_labels(labels: list[torch.Tensor], info: DatasetInfo) -> np.ndarray:
    if not labels:
        shape = (0, info.num_classes) if info.multilabel else (0,)
        return np.zeros(shape, dtype=np.float32 if info.multilabel else np.int64)
    if info.multilabel:
        out = np.stack([lab.to(torch.float32).numpy() for lab in labels])
        if out.shape[1:] != (info.num_classes,):
            raise InputError(
                f"multi-label targets have shape {out.shape[1:]}, expected ({info.num_classes},)"
            )
        return out
    out = np.array([int(lab.item()) for lab in labels], dtype=np.int64)
    bad = np.flatnonzero((out < 0) | (out >= info.num_classes))
    if bad.size:
        raise InputError(
            f"sample {int(bad[0])}: label {int(out[bad[0]])} is outside 0..{info.num_classes - 1}"
        )
    return out


def _split_names(used: Sequence[str]) -> list[str]:
    seen = set(used)
    return [s for s in SPLIT_ORDER if s in seen] + sorted(seen - set(SPLIT_ORDER))


def _write_npy_header(fh: IO[bytes], dtype: np.dtype, shape: tuple[int, ...]) -> int:
    start = fh.tell()
    np.lib.format.write_array_header_1_0(
        fh,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
    )
    return fh.tell() - start


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


def _load_index(root: Path, header: dict[str, Any]) -> dict[str, np.ndarray]:
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


def _open_array(root: Path, modality: str, expected: dict[str, Any]) -> np.ndarray:
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
        index = _load_index(self.root, header)
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
            _open_array(self.root, m, self._expected[m])
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
                m: _open_array(self.root, m, self._expected[m]) for m in self._modalities
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


# --------------------------------------------------------------------------- verifying


def verify_packed(root: Path) -> dict[str, Any]:
    """Check a cache end to end; return a summary or raise InputError naming the problem.

    Returns ``{"root", "num_samples", "splits": {split: count}, "class_balance":
    {split: {class_name: count}}, "presence": {modality: fraction present},
    "arrays": {modality: {"dtype", "shape"}}}``.
    """
    root = Path(root)
    header = read_header(root)
    index = _load_index(root, header)
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
    array = _open_array(root, m, expected)
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
