"""What every runtime shares: sidecar loading, option checks, input validation, describe().

A runtime is built from an export directory and runs one of its graphs::

    runtime = RUNTIMES["onnxruntime"](export_dir, precision="fp32", threads=2)
    logits = runtime.run(batch)          # Batch or dict of arrays -> (batch, classes) float32
    outs = runtime.run_graph(arrays)     # any graph (encoder_<m>, fusion_head) -> {name: array}
    runtime.describe()                   # backend, version, device, precision, threads, providers

Inputs are validated against export.json before the engine sees them (InputError naming the
input, expected vs got). ``available()`` says whether a backend can run here, and why not.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError, InputError, MissingDependencyError
from mmfurnace.export.inputs import build_feed, build_graph_feed
from mmfurnace.export.spec import (
    FULL_GRAPH,
    FUSION_GRAPH,
    ExportSpec,
    GraphSpec,
    encoded_axis,
    load_spec,
    seq_axis,
)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class Runtime:
    """Base class of the backends in RUNTIMES. Subclasses implement ``_run`` (and ``_describe``)."""

    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") when this backend can run here, else (False, why not)."""
        return True, ""

    @classmethod
    def supported_precisions(cls) -> tuple[str, ...]:
        """Precisions this backend can run here (may depend on the hardware)."""
        return cls.precisions

    def __init__(
        self,
        export_dir: str | Path,
        *,
        graph: str = FULL_GRAPH,
        precision: str = "fp32",
        threads: int | None = None,
        verify: bool = True,
    ) -> None:
        ok, why = type(self).available()
        if not ok:
            raise MissingDependencyError(f"runtime {self.name!r} is not available here: {why}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is unknown; known: {', '.join(PRECISIONS)}")
        supported = type(self).supported_precisions()
        if precision not in supported:
            raise ConfigError(
                f"runtime {self.name!r} does not run {precision} here; it runs {', '.join(supported)}"
            )
        if threads is not None and threads < 1:
            raise ConfigError(
                f"threads must be >= 1 (or None for the backend default), got {threads}"
            )
        self.spec: ExportSpec = load_spec(export_dir)
        self.graph: GraphSpec = self.spec.graph(graph)
        self.precision = precision
        self.threads = threads
        self.verify = verify

    # -- running ---------------------------------------------------------------------------

    def run(self, batch: Batch | Mapping[str, Any]) -> np.ndarray:
        """Logits (batch, num_classes) float32 for a Batch or dict of flat arrays (full model),
        or for the fusion head's inputs when this runtime runs ``fusion_head``."""
        if self.graph.name not in (FULL_GRAPH, FUSION_GRAPH):
            raise InputError(f"graph {self.graph.name!r} does not produce logits; use run_graph()")
        outputs = self._run(self.feed(batch))
        return np.asarray(outputs[0], dtype=np.float32)

    def run_graph(self, arrays: Batch | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """All outputs of this runtime's graph, by name."""
        outputs = self._run(self.feed(arrays))
        return dict(zip(self.graph.output_names, outputs, strict=False))

    def feed(self, batch: Batch | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The validated numpy inputs of this runtime's graph (raises InputError when wrong)."""
        if self.graph.name == FULL_GRAPH:
            return build_feed(self.spec, batch)
        if isinstance(batch, Batch):
            raise InputError(
                f"graph {self.graph.name!r} takes {self.graph.input_names}, not a Batch"
            )
        return build_graph_feed(self.spec, self.graph, batch)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def onnx_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The subset of ``feed`` the ONNX file declares (the exporter drops unread inputs)."""
        names = self.graph.onnx_inputs or tuple(self.graph.input_names)
        return {n: feed[n] for n in names}

    # -- reporting -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """backend, version, device, precision, threads, providers (+ backend specifics)."""
        return {
            "backend": self.name,
            "version": None,
            "device": "cpu",
            "precision": self.precision,
            "threads": self.threads,
            "providers": [],
            "graph": self.graph.name,
            "export_dir": str(self.spec.directory),
            **self._describe(),
        }

    def _describe(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.spec.directory)!r}, graph={self.graph.name!r}, precision={self.precision!r})"


def wrap_engine_error(what: Path | str, err: Exception) -> InputError:
    """An engine's load error as an InputError naming the file (kept short)."""
    text = str(err).strip().splitlines()
    return InputError(f"{what}: cannot be loaded: {type(err).__name__}: {text[-1] if text else ''}")


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices visible to this process (via torch, else the driver); 0 without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except Exception:  # a broken torch CUDA install must not break CPU runtimes
        pass
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0:
            return int(count.value)
    return 0


def cache_dir(spec: ExportSpec, option: str | Path | None) -> Path:
    """Where built artefacts (optimized models, engines) go: ``option``, else <export>/cache."""
    path = Path(option) if option is not None else spec.directory / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path




def sequence_hint(spec: ExportSpec, modality: str) -> int | None:
    """Typical length of a sequence modality from the preprocessing settings, if recorded."""
    prep = spec.preprocessing or {}
    section = prep.get(modality) if isinstance(prep, dict) else None
    if not isinstance(section, dict):
        return None
    if modality == "text" and section.get("max_length"):
        return int(section["max_length"])
    if modality == "audio" and section.get("max_seconds") and section.get("hop_length"):
        return (
            int(
                float(section["max_seconds"])
                * int(section.get("sample_rate", 16000))
                // int(section["hop_length"])
            )
            + 1
        )
    return None


def profile_shapes(
    spec: ExportSpec,
    graph: GraphSpec,
    *,
    batch: tuple[int, int, int],
    lengths: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes per ONNX input for a TensorRT optimization profile.

    ``batch`` is (min, opt, max) for the batch axis; ``lengths`` maps a modality to the
    (min, opt, max) of its sequence axis (default: 1, the preprocessing length or 64, 512).
    The encoded axis of a modality uses the same range (encoders never lengthen a sequence).
    """
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {batch}")
    ranges: dict[str, tuple[int, int, int]] = {"batch": batch}
    for m in spec.modalities:
        if not spec.is_sequence(m):
            continue
        opt = sequence_hint(spec, m) or 64
        chosen = (lengths or {}).get(m, (1, opt, max(opt, 512)))
        if not 1 <= chosen[0] <= chosen[1] <= chosen[2]:
            raise ConfigError(
                f"length profile of {m} must satisfy 1 <= min <= opt <= max, got {chosen}"
            )
        ranges[seq_axis(m)] = ranges[encoded_axis(m)] = tuple(chosen)  # type: ignore[assignment]
    shapes = {}
    names = graph.onnx_inputs or tuple(graph.input_names)
    for t in graph.inputs:
        if t.name not in names:
            continue
        lo, mid, hi = (
            [d if isinstance(d, int) else ranges[d][i] for d in t.shape] for i in range(3)
        )
        shapes[t.name] = (tuple(lo), tuple(mid), tuple(hi))
    return shapes
