"""The Open Inference Protocol (KServe v2) contract: decode requests into rows, encode responses.

No HTTP here: bytes in, rows out; logits in, bytes out — so the contract is tested alone.

Inputs (named tensors; ``b`` = rows in the request, each row one sample):
    image   BYTES [b] (or [b, 1])   encoded image files (PNG, JPEG, ...)
            FP32  [b, C, H, W]      preprocessed (normalised) pixels
    audio   BYTES [b]               audio files (WAV, FLAC, ...)
            FP32  [b, frames, F]    preprocessed features (MFCC / log-mel frames)
    text    BYTES [b]               UTF-8 text
            INT64 [b, tokens]       token ids (INT32 accepted); PAD_ID (0) trailing = padding
    <m>_mask    BOOL [b, L]         optional, preprocessed sequences: True = real frame/token
    <m>_present BOOL [b]            optional: False drops modality <m> from that row
Any subset of modalities may be sent; every row needs at least one.

BYTES elements travel either in the binary-data extension (Triton's: JSON header of
``Inference-Header-Content-Length`` bytes, then each binary input's bytes in input order,
``parameters.binary_data_size`` giving its length; a BYTES element is a 4-byte little-endian
length then the bytes) or in the JSON ``data`` list. The binary extension is what it is for:
files (PNG, WAV) and large tensors go as their own bytes — no base64 (+33 %), no JSON
number formatting and parsing — and it is what ``tritonclient`` sends by default. In JSON,
a BYTES element must be a string, so an image or audio file comes base64-encoded, as a
Triton client sends it with ``binary_data=False`` (it refuses raw non-UTF-8 bytes there):
a base64 string (standard or URL-safe alphabet, padding optional, whitespace ignored), or
``{"b64": "..."}`` (the KServe / TF-Serving convention); text elements are plain strings.

Numeric JSON data is checked element by element against its datatype: FP16/32/64 take JSON
numbers, INT*/UINT* JSON integers (in range), BOOL true/false — never strings, booleans as
numbers, or floats as integers. Data nested deeper than its shape is refused, and so is a
shape whose element count does not fit the data (computed exactly, so it cannot overflow).
A request-level ``parameters.timeout`` (microseconds, as Triton's) sets its deadline.

Outputs: ``probabilities`` FP32 [b, classes] (softmax; sigmoid for multi-label models),
``label`` BYTES [b] (class name; multi-label: names with p >= 0.5 joined by ","), and
``logits`` FP32 [b, classes]. Each is JSON or binary per ``parameters.binary_data`` (or the
request-level ``binary_data_output``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

from mmfurnace.errors import InputError
from mmfurnace.serve.signature import (
    V2_DTYPES,
    V2_NAMES,
    ModelSignature,
    Row,
    decode_base64,
    labels,
    probabilities,
    request_rows,
)

OUTPUTS = ("probabilities", "label", "logits")
DEFAULT_OUTPUTS = ("probabilities", "label")
HEADER_LENGTH = "Inference-Header-Content-Length"


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class _Output(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_Tensor]
    outputs: list[_Output] | None = None


@dataclass(frozen=True)
class InferCall:
    """A decoded /infer request: its id, one Row per sample, the outputs asked for
    (name -> binary?)."""

    id: str | None
    rows: list[Row]
    outputs: dict[str, bool]
    timeout_s: float | None = None


# ----------------------------------------------------------------------------- decoding


def parse_infer_request(
    body: bytes, sig: ModelSignature, *, header_length: int | None = None, max_rows: int = 256
) -> InferCall:
    """Decode an /infer body (JSON, or JSON + binary tensors) into rows; InputError on misuse."""
    header, binary = _split(body, header_length)
    try:
        raw = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise InputError("request JSON is nested too deeply") from None
    try:
        req = _Request.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InputError(f"malformed inference request: {where}: {first['msg']}") from None
    names = [t.name for t in req.inputs]
    if len(set(names)) != len(names):
        raise InputError(f"input names repeat: {names}")
    tensors = _read_tensors(req.inputs, binary)
    rows = request_rows(tensors, sig, max_rows)
    return InferCall(req.id, rows, _outputs(req), _timeout(req))


def _timeout(req: _Request) -> float | None:
    value = (req.parameters or {}).get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 3_600_000_000:
        raise InputError(f"parameters.timeout must be an integer number of microseconds in (0, 3.6e9], got {value!r}")
    return value / 1e6


def _split(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not 0 < header_length <= len(body):
        raise InputError(
            f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
        )
    return body[:header_length], body[header_length:]


def _read_tensors(inputs: list[_Tensor], binary: bytes) -> dict[str, Any]:
    """name -> ndarray (numeric) or list[bytes | str] (BYTES), shapes checked against data."""
    out: dict[str, Any] = {}
    offset = 0
    for t in inputs:
        if any(d < 0 for d in t.shape) or len(t.shape) > 32:
            raise InputError(f"input {t.name!r}: shape {t.shape} must be at most 32 non-negative integers")
        count = math.prod(t.shape)  # exact: a huge shape cannot wrap around
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InputError(
                    f"input {t.name!r}: binary_data_size {size!r} runs past the {len(binary)} "
                    "binary bytes after the JSON header"
                )
            chunk, offset = binary[offset : offset + size], offset + size
            out[t.name] = _from_binary(t, chunk, count)
        elif t.data is not None:
            out[t.name] = _from_json(t, count)
        else:
            raise InputError(f"input {t.name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} binary bytes after the JSON header belong to no input")
    return out


def _from_binary(t: _Tensor, chunk: bytes, count: int) -> Any:
    if t.datatype == "BYTES":
        elements, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise InputError(f"input {t.name!r}: truncated BYTES element length at byte {pos}")
            (n,) = struct.unpack_from("<I", chunk, pos)
            if pos + 4 + n > len(chunk):
                raise InputError(f"input {t.name!r}: BYTES element of {n} bytes runs past the data")
            elements.append(chunk[pos + 4 : pos + 4 + n])
            pos += 4 + n
        if len(elements) != count:
            raise InputError(f"input {t.name!r}: shape {t.shape} needs {count} elements, got {len(elements)}")
        return elements
    dtype = _dtype(t)
    want = count * np.dtype(dtype).itemsize
    if len(chunk) != want:
        raise InputError(
            f"input {t.name!r}: {t.datatype} {t.shape} needs {want} bytes, binary data has {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(t.shape)


# JSON element types each datatype takes (bool is a subclass of int: listed on its own).
_JSON_TYPES = {"BOOL": {bool}, "FP": {int, float}, "INT": {int}}


def _from_json(t: _Tensor, count: int) -> Any:
    flat = _flatten(t.data, max(1, len(t.shape)), t.name)
    if len(flat) != count:
        raise InputError(f"input {t.name!r}: shape {t.shape} needs {count} elements, data has {len(flat)}")
    if t.datatype == "BYTES":
        for x in flat:
            if not (isinstance(x, str) or (isinstance(x, dict) and set(x) == {"b64"} and isinstance(x["b64"], str))):
                raise InputError(f'input {t.name!r}: BYTES data in JSON must be strings (or {{"b64": "..."}})')
        return [decode_base64(x["b64"], f"input {t.name!r} row {i}") if isinstance(x, dict) else x
                for i, x in enumerate(flat)]
    dtype = _dtype(t)
    kind = "BOOL" if t.datatype == "BOOL" else "FP" if t.datatype.startswith("FP") else "INT"
    wrong = set(map(type, flat)) - _JSON_TYPES[kind]
    if wrong:
        want = {"BOOL": "true/false", "FP": "JSON numbers", "INT": "JSON integers"}[kind]
        raise InputError(f"input {t.name!r}: {t.datatype} data must be {want}; got "
                         f"{', '.join(sorted(_JSON_NAMES.get(w, w.__name__) for w in wrong))}")
    try:
        with np.errstate(over="raise"):
            array = np.asarray(flat, dtype=dtype)
    except (TypeError, ValueError, OverflowError, FloatingPointError) as err:
        raise InputError(f"input {t.name!r}: data does not fit {t.datatype}: {err}") from None
    return array.reshape(t.shape)


_JSON_NAMES = {str: "strings", bool: "booleans", float: "floats", int: "integers", dict: "objects", type(None): "null"}


def _flatten(data: list[Any], max_depth: int, name: str) -> list[Any]:
    """Nested lists -> flat list (iterative: no recursion on hostile nesting)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                if len(stack) >= max_depth:
                    raise InputError(f"input {name!r}: data is nested deeper than its shape's {max_depth} axes")
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _dtype(t: _Tensor) -> Any:
    if t.datatype not in V2_DTYPES:
        raise InputError(
            f"input {t.name!r}: unknown datatype {t.datatype!r}; known: BYTES, {', '.join(V2_DTYPES)}"
        )
    return V2_DTYPES[t.datatype]


def _outputs(req: _Request) -> dict[str, bool]:
    default_binary = bool((req.parameters or {}).get("binary_data_output", False))
    if not req.outputs:
        return {name: default_binary for name in DEFAULT_OUTPUTS}
    out: dict[str, bool] = {}
    for o in req.outputs:
        if o.name not in OUTPUTS:
            raise InputError(f"unknown output {o.name!r}; this model gives {', '.join(OUTPUTS)}")
        out[o.name] = bool((o.parameters or {}).get("binary_data", default_binary))
    return out


# ----------------------------------------------------------------------------- encoding


def encode_infer_response(
    call: InferCall, sig: ModelSignature, logits: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The /infer response body and headers for ``logits`` (rows, classes)."""
    probs = probabilities(logits, sig.multilabel)
    values: dict[str, Any] = {
        "probabilities": probs,
        "logits": np.asarray(logits, dtype=np.float32),
        "label": [s.encode("utf-8") for s in labels(probs, sig.class_names, sig.multilabel)],
    }
    outputs, blobs = [], []
    for name, binary in call.outputs.items():
        value = values[name]
        entry: dict[str, Any] = {"name": name}
        if isinstance(value, list):
            entry.update(datatype="BYTES", shape=[len(value)])
            blob = b"".join(struct.pack("<I", len(v)) + v for v in value)
            json_data: Any = [v.decode("utf-8") for v in value]
        else:
            entry.update(datatype="FP32", shape=list(value.shape))
            blob = value.astype("<f4").tobytes()
            json_data = value.reshape(-1).tolist()
        if binary:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": sig.name, "model_version": sig.version, "outputs": outputs}
    if call.id is not None:
        response["id"] = call.id
    header = json.dumps(response).encode("utf-8")
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def model_metadata(sig: ModelSignature) -> dict[str, Any]:
    """/v2/models/{name}: raw inputs as BYTES; the preprocessed forms under ``parameters``."""
    inputs = [{"name": m, "datatype": "BYTES", "shape": [-1]} for m in sig.modalities]
    preprocessed = {
        m: {
            "datatype": V2_NAMES.get(sig.input_dtypes.get(m, "float32"), "FP32"),
            "shape": [-1, *(-1 if d is None else d for d in sig.input_shapes[m])],
        }
        for m in sig.modalities
    }
    classes = len(sig.class_names)
    return {
        "name": sig.name,
        "versions": [sig.version],
        "platform": "mmfurnace",
        "inputs": inputs,
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
        ],
        "parameters": {
            "preprocessed_inputs": preprocessed,
            "class_names": list(sig.class_names),
            "multilabel": sig.multilabel,
        },
    }
