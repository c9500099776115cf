"""The engine's compute stages: collate rows into flat feeds, run one graph, split the rows out.

A stage runs one graph of the exported interface (names as in :mod:`mmfurnace.export.spec`):
    encoder_<m>   <m>, <m>_mask (sequences), <m>_present -> <m>_sequence, <m>_pooled[, <m>_sequence_mask]
    fusion_head   <m>_sequence, <m>_pooled[, <m>_sequence_mask], <m>_present (every m) -> logits
    model         <m>, <m>_mask, <m>_present (every m) -> logits

Two kinds of stage share one interface — ``prepare(feed)`` (host side: pin + start the copy
to the device) then ``compute(prepared) -> {output name: array}``:
  * :class:`TorchStage` runs the PyTorch module itself ("eager"). On a CUDA device the
    host->device copies go on a separate CUDA stream, so the copy of the next batch overlaps
    the compute of the current one (the engine runs ``prepare`` and ``compute`` in different
    threads, two batches in flight);
  * :class:`RuntimeStage` runs a graph with a runtime from ``mmfurnace.export.runtimes.RUNTIMES``
    (onnxruntime, openvino, tensorrt, torchscript, compile, ...).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfurnace.data.batch import PAD_ID
from mmfurnace.errors import ConfigError
from mmfurnace.export.spec import FULL_GRAPH, FUSION_GRAPH, encoder_graph
from mmfurnace.models.outputs import EncoderOutput

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class EncodedRow:
    """One row's encoder output: sequence (steps, dim), pooled (dim,), mask (steps,) or None."""

    sequence: np.ndarray
    pooled: np.ndarray
    mask: np.ndarray | None


@dataclass(frozen=True)
class EncoderShape:
    """What an encoder emits (learned at warm-up): fixed steps (None: varies), widths, mask."""

    steps: int | None
    dim: int
    pooled_dim: int
    has_mask: bool


# ----------------------------------------------------------------------------- collation


def collate_modality(m: str, rows: list[np.ndarray | None], sequence: bool, like: np.ndarray | None = None) -> Feed:
    """Rows of one modality (None = absent) -> {m, m_mask (sequences), m_present}.

    Sequences are padded to the longest row (PAD_ID for ids, 0 for features); when no row has
    the modality, ``like`` (one example row) gives the shape and the sequence length is 1.
    """
    present = np.array([r is not None for r in rows], dtype=bool)
    real = [r for r in rows if r is not None]
    ref = real[0] if real else like
    assert ref is not None, f"{m}: no row and no template to collate from"
    fill = PAD_ID if ref.dtype.kind in "iu" else 0
    if sequence:
        longest = max([r.shape[0] for r in real] or [1])
        x = np.full((len(rows), longest, *ref.shape[1:]), fill, dtype=ref.dtype)
        mask = np.zeros((len(rows), longest), dtype=bool)
        for i, r in enumerate(rows):
            if r is not None:
                x[i, : r.shape[0]] = r
                mask[i, : r.shape[0]] = True
        return {m: x, f"{m}_mask": mask, f"{m}_present": present}
    x = np.zeros((len(rows), *ref.shape), dtype=ref.dtype)
    for i, r in enumerate(rows):
        if r is not None:
            x[i] = r
    return {m: x, f"{m}_present": present}


def collate_whole(rows: list[dict[str, np.ndarray]], modalities: list[str], sequences: set[str], like: dict[str, np.ndarray]) -> Feed:
    """Preprocessed rows (any subset of modalities each) -> the full model's flat feed."""
    feed: Feed = {}
    for m in modalities:
        feed.update(collate_modality(m, [r.get(m) for r in rows], m in sequences, like[m]))
    return feed


def collate_features(rows: list[dict[str, EncodedRow]], shapes: dict[str, EncoderShape]) -> Feed:
    """Per-row encoder outputs (any subset each) -> the fusion head's flat feed; absent rows
    and modalities are zeros with ``<m>_present`` False (fusions ignore them)."""
    feed: Feed = {}
    n = len(rows)
    for m, shape in sorted(shapes.items()):
        got = [r.get(m) for r in rows]
        if shape.steps is not None:
            steps = shape.steps
        else:
            steps = max([g.sequence.shape[0] for g in got if g is not None] or [1])
        seq = np.zeros((n, steps, shape.dim), dtype=np.float32)
        pooled = np.zeros((n, shape.pooled_dim), dtype=np.float32)
        mask = np.zeros((n, steps), dtype=bool)
        for i, g in enumerate(got):
            if g is None:
                continue
            k = g.sequence.shape[0]
            seq[i, :k] = g.sequence
            pooled[i] = g.pooled
            mask[i, :k] = True if g.mask is None else g.mask
        feed[f"{m}_sequence"] = seq
        feed[f"{m}_pooled"] = pooled
        if shape.has_mask:
            feed[f"{m}_sequence_mask"] = mask
        feed[f"{m}_present"] = np.array([g is not None for g in got], dtype=bool)
    return feed


def split_encoded(m: str, out: Feed, variable: bool) -> list[EncodedRow]:
    """An encoder's batch outputs -> one EncodedRow per row; variable-length rows are cut
    after their last real step, so the fusion batch re-pads them to its own longest row."""
    seq, pooled = out[f"{m}_sequence"], out[f"{m}_pooled"]
    mask = out.get(f"{m}_sequence_mask")
    # Views, not copies: nothing writes to a batch's outputs once they are split.
    if mask is None:
        return [EncodedRow(seq[i], pooled[i], None) for i in range(seq.shape[0])]
    if variable:  # cut after the last real step of each row
        last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
        keep = np.where(mask.any(axis=1), last, mask.shape[1])
    else:
        keep = np.full(mask.shape[0], mask.shape[1])
    return [EncodedRow(seq[i, :k], pooled[i], mask[i, :k]) for i, k in enumerate(keep.tolist())]


def example_row(m: str, shape: tuple[int | None, ...], dtype: str) -> np.ndarray:
    """A harmless row of modality ``m`` for warm-up and as a collation template."""
    dims = [3 if d is None else int(d) for d in shape]
    if dtype.startswith("int"):
        return np.ones(dims, dtype=dtype)  # id 1: a real token ([UNK]) in every vocabulary
    return np.zeros(dims, dtype=dtype)


# ----------------------------------------------------------------------------- stages


class TorchStage:
    """Runs ``graph`` of an in-memory classifier with PyTorch on ``device``.

    graph: "encoder_<m>", "fusion_head" or "model". ``model`` must already be on ``device``
    and in eval mode; several stages may share it (inference does not mutate it).
    """

    def __init__(self, model: nn.Module, graph: str, *, device: str = "cpu") -> None:
        self.model = model
        self.graph = graph
        self.device = torch.device(device)
        self.modality = next((m for m in model.modalities if graph == encoder_graph(m)), None)
        assert graph in (FULL_GRAPH, FUSION_GRAPH) or self.modality is not None, graph
        # an FP16/BF16 checkpoint's model takes its float inputs in its own dtype
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        # A side stream for host->device copies; guarded so CPU-only machines never touch CUDA.
        self.copy_stream = (
            torch.cuda.Stream(self.device) if self.device.type == "cuda" and torch.cuda.is_available() else None
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": "eager", "device": str(self.device), "graph": self.graph,
                "copy_stream": self.copy_stream is not None}

    def prepare(self, feed: Feed) -> tuple[dict[str, torch.Tensor], Any]:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
        if self.dtype != torch.float32:
            tensors = {k: t.to(self.dtype) if t.is_floating_point() else t for k, t in tensors.items()}
        if self.copy_stream is None:
            return tensors, None
        with torch.cuda.stream(self.copy_stream):
            moved = {k: t.pin_memory().to(self.device, non_blocking=True) for k, t in tensors.items()}
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return moved, ready

    def compute(self, prepared: tuple[dict[str, torch.Tensor], Any]) -> Feed:
        x, ready = prepared
        if ready is not None:
            compute_stream = torch.cuda.current_stream(self.device)
            compute_stream.wait_event(ready)
            for t in x.values():  # memory made on the copy stream is in use on this one
                t.record_stream(compute_stream)
        with torch.inference_mode():
            out = self._forward(x)
        return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                for k, v in out.items()}

    def _forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.model
        if self.modality is not None:
            m = self.modality
            enc = model.encode(m, x[m], x.get(f"{m}_mask"), x[f"{m}_present"])
            out = {f"{m}_sequence": enc.sequence, f"{m}_pooled": enc.pooled}
            if enc.valid is not None:
                out[f"{m}_sequence_mask"] = enc.valid
            return out
        # Modalities absent from every row are left out, as the eager model would see them.
        live = [m for m in model.modalities if bool(x[f"{m}_present"].any())]
        present = {m: x[f"{m}_present"] for m in model.modalities}
        if self.graph == FUSION_GRAPH:
            features = {
                m: EncoderOutput(x[f"{m}_sequence"], x[f"{m}_pooled"], x.get(f"{m}_sequence_mask"))
                for m in live
            }
            return {"logits": model.fuse(features, present)}
        inputs = {m: x[m] for m in live}
        valid = {m: x[f"{m}_mask"] for m in live if f"{m}_mask" in x}
        return {"logits": model(inputs, present, valid).logits}


class RuntimeStage:
    """Runs one graph with an export runtime (``RUNTIMES[runtime](export_dir, graph=...)``)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.graph = runtime.graph.name

    def describe(self) -> dict[str, Any]:
        return dict(self.runtime.describe())

    def prepare(self, feed: Feed) -> Feed:
        return feed

    def compute(self, feed: Feed) -> Feed:
        return self.runtime.run_graph(feed)


class GraphBatch:
    """Rows of one graph <-> one batch: ``collate(rows)`` builds the flat feed and starts its
    transfer (``stage.prepare``); ``compute(prepared)`` runs the graph and returns one result
    per row — an EncodedRow for an encoder, a (classes,) logits row for fusion_head / model.

    like: modality -> example row (shapes when no row has the modality); shapes: what each
    encoder emits (fusion_head only).
    """

    def __init__(self, stage: Any, graph: str, *, modalities: list[str], sequences: set[str],
                 like: dict[str, np.ndarray], shapes: dict[str, EncoderShape] | None = None) -> None:
        self.stage, self.graph = stage, graph
        self.modalities, self.sequences, self.like = modalities, sequences, like
        self.shapes = shapes or {}
        self.modality = graph.removeprefix("encoder_") if graph.startswith("encoder_") else None
        assert graph in (FULL_GRAPH, FUSION_GRAPH) or self.modality in modalities, graph
        assert graph != FUSION_GRAPH or sorted(self.shapes) == sorted(modalities), "fusion needs encoder shapes"

    def collate(self, rows: list[Any]) -> Any:
        if self.graph == FULL_GRAPH:
            feed = collate_whole(rows, self.modalities, self.sequences, self.like)
        elif self.graph == FUSION_GRAPH:
            feed = collate_features(rows, self.shapes)
        else:
            m = self.modality
            feed = collate_modality(m, rows, m in self.sequences)
        return self.stage.prepare(feed)

    def compute(self, prepared: Any) -> list[Any]:
        out = self.stage.compute(prepared)
        if self.modality is None:
            return list(out["logits"])
        m = self.modality
        return split_encoded(m, out, f"{m}_sequence_mask" in out)

    def __call__(self, rows: list[Any]) -> list[Any]:
        return self.compute(self.collate(rows))


def runtime_device_options(runtime: str, device: str) -> dict[str, Any]:
    """The constructor options that put runtime ``runtime`` on ``device`` ("cpu", "cuda:N").

    Runtimes name devices their own way (torch: ``device="cuda:0"``; GPU execution providers:
    ``device_id=0``; OpenVINO: ``device="CPU"``); a runtime that cannot run on ``device`` is a
    ConfigError naming both.
    """
    from mmfurnace.export.runtimes import RUNTIMES

    params = inspect.signature(RUNTIMES[runtime].__init__).parameters
    on_gpu = device.startswith("cuda")
    if "device_id" in params:  # the GPU execution providers
        if not on_gpu:
            raise ConfigError(f"runtime {runtime!r} runs on a CUDA GPU; set its device to cuda[:N], not {device!r}")
        return {"device_id": int(device.partition(":")[2] or 0)}
    if "device" in params and runtime != "openvino":
        return {"device": device}
    if on_gpu:
        raise ConfigError(
            f"runtime {runtime!r} runs on the CPU here; use device cpu, or a CUDA runtime "
            f"(eager, torchscript, compile, onnxruntime-cuda, onnxruntime-tensorrt) for {device!r}"
        )
    return {"device": "CPU"} if runtime == "openvino" else {}


def build_runtime_stage(runtime: str, export_dir: str | Path, graph: str, *, device: str, threads: int | None) -> RuntimeStage:
    """A RuntimeStage for ``graph`` of ``export_dir`` on ``device`` with ``runtime``."""
    from mmfurnace.export.runtimes import RUNTIMES

    options: dict[str, Any] = {"graph": graph, **runtime_device_options(runtime, device)}
    if threads is not None:
        options["threads"] = threads
    return RuntimeStage(RUNTIMES[runtime](export_dir, **options))
