"""Turn a Batch (or a dict of arrays) into the flat, validated numpy feed an exported graph takes.

Every runtime calls :func:`build_feed` before touching its engine, so a wrong shape or dtype
is an InputError naming the input and the expected vs got layout — never an ORT/OpenVINO
traceback. Flat names (see :mod:`mmfurnace.export.spec`): ``<m>`` (data), ``<m>_mask``
(batch, seq) bool True = real frame/token, ``<m>_present`` (batch,) bool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mmfurnace.data.batch import PAD_ID, Batch
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.export.spec import BATCH_AXIS, FULL_GRAPH, ExportSpec, GraphSpec, TensorSpec

_KIND = {"float32": "f", "float16": "f", "int64": "iu", "int32": "iu", "bool": "b"}


def is_sequence(info: DatasetInfo, modality: str) -> bool:
    return None in info.input_shapes[modality]


def flatten_batch(batch: Batch | Mapping[str, Any]) -> dict[str, Any]:
    """A Batch as flat names (``audio``, ``audio_mask``, ``audio_present``); dicts pass through."""
    if isinstance(batch, Batch):
        flat: dict[str, Any] = dict(batch.inputs)
        flat.update({f"{m}_mask": v for m, v in batch.valid.items()})
        flat.update({f"{m}_present": v for m, v in batch.present.items()})
        return flat
    if isinstance(batch, Mapping):
        return dict(batch)
    raise InputError(f"expected a Batch or a dict of arrays, got {type(batch).__name__}")


def build_feed(spec: ExportSpec, batch: Batch | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate ``batch`` against the full-model graph's inputs and return numpy arrays.

    Fills what may be left out: a modality absent from every row (zeros, mask False, present
    False), a missing ``<m>_mask`` (all real) and a missing ``<m>_present`` (True where the
    modality is given). Casts within a dtype kind (float64 -> float32, int32 -> int64);
    anything else is an InputError naming the input, expected vs got.
    """
    graph, info = spec.graph(FULL_GRAPH), spec.info
    where = f"{spec.directory}: "
    flat = {k: _to_numpy(k, v, where) for k, v in flatten_batch(batch).items()}
    unknown = sorted(set(flat) - set(graph.input_names))
    if unknown:
        raise InputError(f"{where}unknown input(s) {unknown}; this model takes {graph.input_names}")
    batch_size = _batch_size(flat, where)
    for m in spec.modalities:
        _fill_modality(graph, spec.is_sequence(m), flat, m, batch_size, where)
    feed = {t.name: _check(t, flat[t.name], where) for t in graph.inputs if t.name in flat}
    missing = [n for n in graph.input_names if n not in feed]
    if missing:
        raise InputError(f"{where}missing input(s) {missing}")
    _check_axes(graph, feed, where)
    _check_values(info, feed, where)
    return feed


def build_graph_feed(
    spec: ExportSpec, graph: GraphSpec, arrays: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Validate a feed for any graph (encoders, fusion head): every input given, shapes and
    dtypes as the sidecar says, named axes consistent. Nothing is filled in."""
    where = f"{spec.directory}: "
    flat = {k: _to_numpy(k, v, where) for k, v in arrays.items()}
    unknown = sorted(set(flat) - set(graph.input_names))
    missing = [n for n in graph.input_names if n not in flat]
    if unknown or missing:
        raise InputError(
            f"{where}graph {graph.name!r} takes {graph.input_names}; "
            f"missing {missing}, unknown {unknown}"
        )
    feed = {t.name: _check(t, flat[t.name], where) for t in graph.inputs}
    _check_axes(graph, feed, where)
    _check_values(spec.info, feed, where)
    return feed


def _to_numpy(name: str, value: Any, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}input {name!r} is not an array: {err}") from None


def _batch_size(flat: dict[str, np.ndarray], where: str) -> int:
    sizes = {k: v.shape[0] for k, v in flat.items() if v.ndim > 0}
    if not sizes:
        raise InputError(f"{where}batch has no inputs")
    if len(set(sizes.values())) > 1:
        raise InputError(f"{where}inputs disagree on the batch size: {sizes}")
    size = next(iter(sizes.values()))
    if size == 0:
        raise InputError(f"{where}batch is empty (batch size 0)")
    return size


def _fill_modality(
    graph: GraphSpec, sequence: bool, flat: dict[str, np.ndarray], m: str, batch: int, where: str
) -> None:
    mask, present = f"{m}_mask", f"{m}_present"
    if m not in flat:
        if present in flat and flat[present].astype(bool).any():
            raise InputError(
                f"{where}{present} marks rows as having {m}, but no {m!r} input was given"
            )
        spec = graph.input(m)
        length = 1  # as collate pads an all-absent sequence
        shape = [batch] + [length if isinstance(d, str) else d for d in spec.shape[1:]]
        fill = PAD_ID if spec.dtype.startswith("int") else 0
        flat[m] = np.full(shape, fill, dtype=spec.dtype)
        if sequence:
            flat[mask] = np.zeros((batch, length), dtype=bool)
        flat.setdefault(present, np.zeros(batch, dtype=bool))
        return
    if sequence and mask not in flat and flat[m].ndim >= 2:
        flat[mask] = np.ones(flat[m].shape[:2], dtype=bool)
    flat.setdefault(present, np.ones(batch, dtype=bool))


def _check(spec: TensorSpec, value: np.ndarray, where: str) -> np.ndarray:
    kind = _KIND.get(spec.dtype, spec.dtype)
    if value.dtype.kind not in kind:
        raise InputError(
            f"{where}input {spec.name!r} has dtype {value.dtype}; expected {spec.dtype} {spec.layout()}"
        )
    if value.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != got for d, got in zip(spec.shape, value.shape, strict=False)
    ):
        raise InputError(
            f"{where}input {spec.name!r} has shape {tuple(value.shape)}; expected {spec.layout()} {spec.dtype}"
        )
    if value.dtype != spec.np_dtype or not value.flags.c_contiguous:
        value = np.ascontiguousarray(value, dtype=spec.np_dtype)
    return value


def _check_axes(graph: GraphSpec, feed: dict[str, np.ndarray], where: str) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for spec in graph.inputs:
        if spec.name not in feed:
            continue
        for axis, dim in spec.dynamic_axes.items():
            got = int(feed[spec.name].shape[axis])
            if dim in seen and seen[dim][1] != got:
                other, size = seen[dim]
                raise InputError(
                    f"{where}axis {dim!r} is {size} in {other!r} but {got} in {spec.name!r} "
                    f"(shapes {tuple(feed[other].shape)} vs {tuple(feed[spec.name].shape)})"
                )
            if got == 0 and dim != BATCH_AXIS:
                raise InputError(
                    f"{where}input {spec.name!r} has an empty {dim!r} axis; pad to length >= 1"
                )
            seen.setdefault(dim, (spec.name, got))


def _check_values(info: DatasetInfo, feed: dict[str, np.ndarray], where: str) -> None:
    for m in info.modalities:  # data inputs are named after their modality
        x = feed.get(m)
        if x is None:
            continue
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError(f"{where}input {m!r} holds NaN or inf values")
        if x.dtype.kind in "iu" and info.vocab_size is not None and x.size:
            low, high = int(x.min()), int(x.max())
            if low < 0 or high >= info.vocab_size:
                raise InputError(
                    f"{where}input {m!r} holds token ids in [{low}, {high}]; the vocabulary has "
                    f"{info.vocab_size} ids (0..{info.vocab_size - 1})"
                )


def make_example_batch(
    info: DatasetInfo,
    batch_size: int = 3,
    *,
    lengths: Mapping[str, int] | None = None,
    absent: bool = True,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
) -> Batch:
    """A random Batch that fits ``info``: padded sequences of ``lengths`` (defaults: odd
    lengths, so no size happens to be special), and — when ``absent`` and batch_size > 1 —
    row i >= 1 missing modality (i - 1) % n, so every row keeps at least one modality.
    modalities: the subset to generate (default: all of ``info``'s)."""
    gen = torch.Generator().manual_seed(seed)
    modalities = sorted(modalities if modalities is not None else info.modalities)
    lengths = {**{m: 13 + 8 * i for i, m in enumerate(modalities)}, **(lengths or {})}
    inputs, valid, present = {}, {}, {}
    for i, m in enumerate(modalities):
        rows = torch.ones(batch_size, dtype=torch.bool)
        if absent and batch_size > 1 and len(modalities) > 1:
            rows[1 + i :: len(modalities)] = False
        present[m] = rows
        shape = info.input_shapes[m]
        if is_sequence(info, m):
            n = lengths[m]
            real = torch.randint(max(1, n // 2), n + 1, (batch_size,), generator=gen)
            real[0] = n
            mask = (torch.arange(n)[None, :] < real[:, None]) & rows[:, None]
            full = (batch_size, n, *[d for d in shape[1:]])
            valid[m] = mask
        else:
            full = (batch_size, *shape)
            mask = None
        if info.input_dtypes[m].startswith("int"):
            high = info.vocab_size or 2
            x = torch.randint(1 if high > 1 else 0, high, full, generator=gen)
            fill = PAD_ID
        else:
            x = torch.randn(full, generator=gen)
            fill = 0
        if mask is not None:
            x = x.masked_fill(~mask.reshape(mask.shape + (1,) * (x.dim() - 2)), fill)
        inputs[m] = x.masked_fill(~rows.reshape((-1,) + (1,) * (x.dim() - 1)), fill)
    if info.multilabel:
        labels = (torch.rand(batch_size, info.num_classes, generator=gen) > 0.5).float()
    else:
        labels = torch.randint(0, info.num_classes, (batch_size,), generator=gen)
    return Batch(inputs=inputs, valid=valid, present=present, labels=labels)
