"""The export sidecar ``export.json``: everything a deployment needs to feed the exported graphs.

An export directory holds, next to ``export.json``:
    model.onnx / model.ts         the whole classifier, flat inputs -> ``logits``
    encoder_<modality>.onnx (.ts) one encoder each -> ``<m>_sequence``, ``<m>_pooled``
                                  (+ ``<m>_sequence_mask`` for sequence modalities)
    fusion_head.onnx (.ts)        encoder outputs + presence -> ``logits``
    model.safetensors             weights, so eager PyTorch can rebuild the model
The sidecar records, per graph, the flat input/output names with dtypes and shapes (a
string in a shape is a named dynamic axis, e.g. ``"batch"``), the files and their SHA-256,
the DatasetInfo, class names, preprocessing settings and opset.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

FORMAT = "mmfurnace-export"
FORMAT_VERSION = 1
SIDECAR = "export.json"
FULL_GRAPH = "model"
FUSION_GRAPH = "fusion_head"
BATCH_AXIS = "batch"

Dim = int | str  # a fixed size, or the name of a dynamic axis


def encoder_graph(modality: str) -> str:
    return f"encoder_{modality}"


def seq_axis(modality: str) -> str:
    """Name of a sequence modality's variable axis (``audio_frames``, ``text_tokens``)."""
    return {"audio": "audio_frames", "text": "text_tokens"}.get(modality, f"{modality}_steps")


def encoded_axis(modality: str) -> str:
    """Name of the sequence axis after the encoder (it may downsample)."""
    return f"{modality}_encoded"


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input/output: dtype (numpy name) and shape (ints and axis names)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    # cached: inputs are validated against these on every call of a runtime
    @functools.cached_property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @functools.cached_property
    def fixed_axes(self) -> tuple[tuple[int, int], ...]:
        return tuple((i, d) for i, d in enumerate(self.shape) if isinstance(d, int))

    @functools.cached_property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def layout(self) -> str:
        return "(" + ", ".join(str(d) for d in self.shape) + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "dynamic_axes": {str(i): d for i, d in self.dynamic_axes.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["dtype"]), tuple(raw["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its interface and the files (by format) that implement it.

    ``inputs`` is the full flat interface; ``onnx_inputs`` the subset the ONNX file declares
    (the ONNX exporter drops inputs a graph does not read, e.g. sequences under late fusion).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: dict[str, str]
    onnx_inputs: tuple[str, ...] = ()

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    @functools.cached_property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @functools.cached_property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": dict(self.files),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "onnx_inputs": list(self.onnx_inputs),
        }

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> GraphSpec:
        return cls(
            name=name,
            inputs=tuple(TensorSpec.from_dict(t) for t in raw["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in raw["outputs"]),
            files={str(k): str(v) for k, v in raw["files"].items()},
            onnx_inputs=tuple(raw.get("onnx_inputs", ())),
        )


@dataclass(frozen=True)
class ExportSpec:
    """The parsed sidecar of an export directory."""

    directory: Path
    info: DatasetInfo
    graphs: dict[str, GraphSpec]
    opset: int
    preprocessing: dict[str, Any] | None
    model: dict[str, Any]
    hashes: dict[str, str]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """The modalities the exported model takes (may be a subset of the dataset's)."""
        return sorted(self.raw.get("modalities") or self.info.modalities)

    def is_sequence(self, modality: str) -> bool:
        return None in self.info.input_shapes[modality]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def graph(self, name: str) -> GraphSpec:
        if name not in self.graphs:
            raise InputError(
                f"{self.directory}: export has no graph {name!r}; it has {', '.join(sorted(self.graphs))}"
            )
        return self.graphs[name]

    def file(self, graph: str, fmt: str, *, verify: bool = True) -> Path:
        """Path of ``graph`` in format ``fmt`` ("onnx" / "torchscript"), checked against its hash."""
        spec = self.graph(graph)
        if fmt not in spec.files:
            raise InputError(
                f"{self.directory}: graph {graph!r} was not exported as {fmt} "
                f"(it has {', '.join(sorted(spec.files)) or 'no files'}); re-export with formats including {fmt!r}"
            )
        return self.checked_path(spec.files[fmt], verify=verify)

    def checked_path(self, name: str, *, verify: bool = True) -> Path:
        """``directory / name``, raising InputError when missing or when its SHA-256 differs."""
        path = self.directory / name
        if not path.is_file():
            raise InputError(f"{path}: listed in {SIDECAR} but missing")
        if verify and name in self.hashes:
            got = sha256_file(path)
            if got != self.hashes[name]:
                raise InputError(
                    f"{path}: file does not match {SIDECAR} (sha256 expected {self.hashes[name][:12]}…, "
                    f"got {got[:12]}…, {path.stat().st_size} bytes); it was modified, truncated or "
                    "replaced after export — re-export the model"
                )
        return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_spec(directory: Path, raw: dict[str, Any]) -> Path:
    """Write the sidecar (keys in the order given) atomically."""
    from mmfurnace.io import write_json_atomic

    return write_json_atomic(directory / SIDECAR, raw, sort_keys=False)


def load_spec(path: str | Path) -> ExportSpec:
    """Read the sidecar of an export directory (or of the directory holding a given file).

    Raises InputError naming the path when there is no sidecar, it is not valid JSON, or it
    is not an mmfurnace export of this format version.
    """
    path = Path(path)
    directory = path.parent if path.is_file() else path
    sidecar = directory / SIDECAR
    if not directory.exists():
        raise InputError(f"{path}: no such export directory")
    if not sidecar.is_file():
        what = f"{path.name} has no" if path.is_file() else f"{directory} has no"
        raise InputError(
            f"{what} {SIDECAR} sidecar next to it, so it is not an mmfurnace export "
            "(export with `mmfurnace export` / mmfurnace.export.export_model)"
        )
    try:
        raw = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{sidecar}: not valid JSON: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f'{sidecar}: not an mmfurnace export sidecar (no "format": "{FORMAT}")')
    if raw.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{sidecar}: format version {raw.get('format_version')!r}; this mmfurnace reads {FORMAT_VERSION}"
        )
    try:
        info = DatasetInfo.from_dict(raw["info"])
        graphs = {name: GraphSpec.from_dict(name, g) for name, g in raw["graphs"].items()}
        hashes = {name: str(f["sha256"]) for name, f in raw["files"].items()}
        spec = ExportSpec(
            directory=directory,
            info=info,
            graphs=graphs,
            opset=int(raw["opset"]),
            preprocessing=raw.get("preprocessing"),
            model=dict(raw.get("model", {})),
            hashes=hashes,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{sidecar}: malformed sidecar ({type(err).__name__}: {err})") from None
    if FULL_GRAPH not in spec.graphs:
        raise InputError(f"{sidecar}: sidecar lists no {FULL_GRAPH!r} graph")
    return spec
