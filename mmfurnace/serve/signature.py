"""The served model's signature, and checking request rows against it (any protocol).

A row is one sample: modality -> raw input (image/audio file bytes, text str) or a
preprocessed array. :func:`tensor_rows` splits a batched tensor of a request into rows,
checking shape, dtype, NaN/inf, token-id range and sequence length against the signature;
:func:`validate_row` checks one row given through the Python API. Errors are InputErrors
naming the input and what was expected.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmfurnace.data.batch import PAD_ID
from mmfurnace.errors import InputError

RAW_MODALITIES = ("image", "audio")  # BYTES elements that are files (base64 in JSON)
V2_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
V2_NAMES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}

# A row: modality -> raw input (bytes for files, str for text) or a preprocessed array.
Row = dict[str, Any]


@dataclass(frozen=True)
class ModelSignature:
    """What the contract needs to know about the served model (built by the engine).

    input_shapes: per-sample shapes, None on a variable axis (``DatasetInfo`` convention).
    max_steps: sequence modality -> longest preprocessed sequence accepted.
    """

    name: str
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    multilabel: bool
    input_shapes: dict[str, tuple[int | None, ...]]
    input_dtypes: dict[str, str]
    vocab_size: int | None
    max_steps: dict[str, int] = field(default_factory=dict)
    version: str = "1"


def request_rows(tensors: dict[str, Any], sig: ModelSignature, max_rows: int) -> list[Row]:
    known = [*sig.modalities]
    extras = [f"{m}_{s}" for m in sig.modalities for s in ("mask", "present")]
    unknown = sorted(set(tensors) - set(known) - set(extras))
    if unknown:
        raise InputError(
            f"unknown input(s) {unknown}; this model takes {', '.join(known)} "
            f"(plus optional <modality>_mask / <modality>_present)"
        )
    given = [m for m in sig.modalities if m in tensors]
    if not given:
        raise InputError(f"request has no modality input; send at least one of {', '.join(known)}")
    sizes = {name: _length(v) for name, v in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"inputs disagree on the number of rows (first axis): {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise InputError("request has 0 rows")
    if n > max_rows:
        raise InputError(f"request has {n} rows; this server takes at most {max_rows} per request")
    rows: list[Row] = [{} for _ in range(n)]
    for m in given:
        values = _modality_rows(m, tensors[m], tensors.get(f"{m}_mask"), sig)
        present = _bool_rows(f"{m}_present", tensors.get(f"{m}_present"), n)
        for i in range(n):
            if present[i]:
                rows[i][m] = values[i]
    for m in sig.modalities:
        for suffix in ("mask", "present"):
            if f"{m}_{suffix}" in tensors and m not in tensors:
                raise InputError(f"input {m}_{suffix!s} given without input {m!r}")
    for i, row in enumerate(rows):
        if not row:
            raise InputError(f"row {i} has no modality left (every <m>_present is False)")
    return rows


def validate_row(row: Mapping[str, Any], sig: ModelSignature) -> Row:
    """Check one row given through the Python API (or decoded from HTTP): known modalities,
    file bytes for image/audio, str/UTF-8 for text, arrays/tensors shaped for the model."""
    if not isinstance(row, Mapping) or not row:
        raise InputError(f"a request needs at least one modality; this model takes {', '.join(sig.modalities)}")
    unknown = sorted(set(row) - set(sig.modalities))
    if unknown:
        raise InputError(f"unknown modality {unknown}; this model takes {', '.join(sig.modalities)}")
    out: Row = {}
    for m, value in row.items():
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            out[m] = tensor_rows(m, value[None], None, sig)[0]
        elif isinstance(value, bytes | bytearray) or (m == "text" and isinstance(value, str)):
            out[m] = raw_element(m, bytes(value) if isinstance(value, bytearray) else value, 0)
        else:
            what = "file bytes" if m in RAW_MODALITIES else "a str or UTF-8 bytes"
            raise InputError(f"{m}: expected {what} or a preprocessed array, got {type(value).__name__}")
    return out


def _length(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    if value.ndim == 0:
        raise InputError("inputs need a batch axis (shape [rows, ...]), got a scalar")
    return int(value.shape[0])


def _bool_rows(name: str, value: Any, n: int) -> list[bool]:
    if value is None:
        return [True] * n
    if isinstance(value, list) or value.dtype != np.bool_ or value.shape != (n,):
        got = "BYTES" if isinstance(value, list) else f"{value.dtype} {list(value.shape)}"
        raise InputError(f"input {name!r} must be BOOL [{n}], got {got}")
    return [bool(v) for v in value]


def _modality_rows(m: str, value: Any, mask: Any, sig: ModelSignature) -> list[Any]:
    if isinstance(value, list):
        if mask is not None:
            raise InputError(f"input {m}_mask only applies to a preprocessed {m!r} tensor, not BYTES")
        return [raw_element(m, v, i) for i, v in enumerate(value)]
    return tensor_rows(m, value, mask, sig)


def raw_element(m: str, value: bytes | str, i: int) -> bytes | str:
    where = f"input {m!r} row {i}"
    if m in RAW_MODALITIES:
        if isinstance(value, str):  # JSON: base64
            value = decode_base64(value, where)
        if not value:
            raise InputError(f"{where}: empty file")
        return value
    if m == "text":
        return decode_text(value, where)
    raise InputError(f"{where}: {m!r} cannot be sent as BYTES; send a numeric tensor")


def decode_base64(value: str, where: str) -> bytes:
    """A base64 string (standard or URL-safe alphabet, padding optional, whitespace ignored,
    as clients variously send it) -> bytes; InputError naming ``where`` otherwise."""
    text = "".join(value.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: BYTES in JSON must be base64-encoded file bytes") from None


def decode_text(value: bytes | str, where: str) -> str:
    """UTF-8 bytes (or str) -> str; InputError naming ``where`` for bad UTF-8, text that is
    not valid Unicode (a lone UTF-16 surrogate from a JSON escape) or empty text."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where}: text is not valid UTF-8 (bad byte at offset {exc.start})") from None
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"{where}: text is not valid Unicode (lone surrogate {value[exc.start]!r} at character {exc.start})"
            ) from None
    if not value.strip():
        raise InputError(f"{where}: empty text (nothing but whitespace)")
    return value


def tensor_rows(m: str, x: np.ndarray, mask: Any, sig: ModelSignature) -> list[np.ndarray]:
    """Validate a preprocessed tensor against the model and split it into per-row arrays."""
    per_sample = sig.input_shapes[m]
    want_dtype = sig.input_dtypes.get(m, "float32")
    layout = "[rows, " + ", ".join("n" if d is None else str(d) for d in per_sample) + "]"
    kind_ok = x.dtype.kind == "f" if want_dtype.startswith("float") else x.dtype.kind in "iu"
    if not kind_ok:
        raise InputError(
            f"input {m!r}: datatype {v2_name(x.dtype)} not accepted; expected {V2_NAMES.get(want_dtype, want_dtype)} {layout}"
        )
    if x.ndim != 1 + len(per_sample) or any(
        d is not None and d != got for d, got in zip(per_sample, x.shape[1:], strict=True)
    ):
        raise InputError(f"input {m!r}: shape {list(x.shape)} does not fit {layout}")
    x = x.astype(want_dtype, copy=False)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError(f"input {m!r} holds NaN or infinite values")
    if x.dtype.kind in "iu" and x.size and sig.vocab_size is not None:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= sig.vocab_size:
            raise InputError(
                f"input {m!r}: token ids span [{low}, {high}]; the vocabulary has ids 0..{sig.vocab_size - 1}"
            )
    if None not in per_sample:
        if mask is not None:
            raise InputError(f"input {m}_mask given, but {m!r} has no variable axis")
        return [np.ascontiguousarray(r) for r in x]
    return _sequence_rows(m, x, mask, sig)


def _sequence_rows(m: str, x: np.ndarray, mask: Any, sig: ModelSignature) -> list[np.ndarray]:
    limit = sig.max_steps.get(m)
    if limit is not None and x.shape[1] > limit:
        raise InputError(f"input {m!r}: {x.shape[1]} steps on axis 1; this model takes at most {limit}")
    if mask is None:
        real = x != PAD_ID if x.dtype.kind in "iu" else np.ones(x.shape[:2], dtype=bool)
    elif isinstance(mask, list) or mask.dtype != np.bool_ or mask.shape != x.shape[:2]:
        got = "BYTES" if isinstance(mask, list) else f"{v2_name(mask.dtype)} {list(mask.shape)}"
        raise InputError(f"input {m}_mask must be BOOL {list(x.shape[:2])}, got {got}")
    else:
        real = mask
    rows = [np.ascontiguousarray(x[i][real[i]]) for i in range(x.shape[0])]
    empty = [i for i, r in enumerate(rows) if r.shape[0] == 0]
    if empty:
        raise InputError(f"input {m!r}: rows {empty} have no real step (all padding)")
    return rows


def v2_name(dtype: np.dtype) -> str:
    for name, np_type in V2_DTYPES.items():
        if np.dtype(np_type) == dtype:
            return name
    return str(dtype)


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """(rows, classes) logits -> float32 probabilities (softmax, or sigmoid for multi-label)."""
    logits = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def labels(probs: np.ndarray, class_names: tuple[str, ...], multilabel: bool) -> list[str]:
    if multilabel:
        return [",".join(n for n, p in zip(class_names, row, strict=True) if p >= 0.5) for row in probs]
    return [class_names[int(i)] for i in probs.argmax(axis=-1)]
