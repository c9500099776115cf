"""Writing a packed cache (layout in :mod:`mmfurnace.data.cache`): samples streamed into one
.npy per modality, then the index, then info.json, in a directory swapped into place."""

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
from mmfurnace.data.cache_read import FORMAT_NAME, FORMAT_VERSION, SPLIT_ORDER
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.io import atomic_dir

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
