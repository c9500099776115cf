"""Check a written export against eager PyTorch on a batch of other sizes before keeping it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfurnace.data.info import DatasetInfo
from mmfurnace.export.graphs import flat_example, graph_args, sequence_modalities
from mmfurnace.export.inputs import make_example_batch
from mmfurnace.export.spec import FULL_GRAPH, GraphSpec
from mmfurnace.export.wrappers import wrap_graph
from mmfurnace.export.writers import ExportError

# Of the output's largest magnitude. A frozen shape or data-dependent branch is off by a good
# part of it; FP32 kernels that differ (ONNX Runtime's convolutions vs PyTorch's, summed over
# EfficientNet-Lite0's 18 blocks) reached 1.6e-4 of it on the encoder's sequence output.
VERIFY_RTOL = 1e-3


def verify_export(
    model: nn.Module,
    info: DatasetInfo,
    modalities: list[str],
    graphs: list[GraphSpec],
    staging: Path,
    formats: tuple[str, ...],
    split: bool,
) -> None:
    """Run the written graphs on a batch of other sizes (batch 5, other lengths) vs eager."""
    lengths = {m: 29 + 6 * i for i, m in enumerate(modalities)}
    other = make_example_batch(info, 5, lengths=lengths, seed=1, modalities=modalities)
    flat = flat_example(model, modalities, other, split)
    full = next(g for g in graphs if g.name == FULL_GRAPH)
    wrapper = wrap_graph(model, full, modalities, sequence_modalities(info, modalities))
    feed = graph_args(full, flat)
    with torch.no_grad():
        ref = wrapper(*feed).numpy()
    tol = VERIFY_RTOL * max(1.0, float(np.abs(ref).max()))
    if "torchscript" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated
            traced = torch.jit.load(str(staging / full.files["torchscript"]))
        with torch.no_grad():
            got = traced(*feed).numpy()
        compare_outputs(got, ref, tol, full.files["torchscript"])
    if "onnx" not in formats:
        return
    try:
        import onnxruntime as ort
    except ImportError:
        return  # nothing to run it with; onnx.checker has passed
    for graph in graphs:
        g_feed = graph_args(graph, flat)
        session = ort.InferenceSession(
            str(staging / graph.files["onnx"]), providers=["CPUExecutionProvider"]
        )
        onnx_feed = {
            n: t.numpy()
            for n, t in zip(graph.input_names, g_feed, strict=False)
            if n in graph.onnx_inputs
        }
        outs = session.run(None, onnx_feed)
        with torch.no_grad():
            refs = wrap_graph(model, graph, modalities, sequence_modalities(info, modalities))(
                *g_feed
            )
        refs = refs if isinstance(refs, tuple) else (refs,)
        for spec, got, want in zip(graph.outputs, outs, refs, strict=False):
            want = want.numpy()
            if got.shape != want.shape:
                raise ExportError(
                    f"{graph.files['onnx']}: output {spec.name!r} has shape {got.shape} on a batch of other "
                    f"sizes, eager gives {want.shape}; a sequence length was frozen during tracing"
                )
            if want.dtype == np.bool_:
                if not np.array_equal(got, want):
                    raise ExportError(
                        f"{graph.files['onnx']}: output {spec.name!r} differs from eager"
                    )
                continue
            compare_outputs(
                got,
                want,
                VERIFY_RTOL * max(1.0, float(np.abs(want).max())),
                f"{graph.files['onnx']}:{spec.name}",
            )


def compare_outputs(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> None:
    if got.shape != want.shape:
        raise ExportError(
            f"{what}: shape {got.shape} on a batch of other sizes, eager gives {want.shape}"
        )
    diff = float(np.abs(got.astype(np.float64) - want).max())
    if not diff <= tol:
        raise ExportError(
            f"{what}: differs from eager by {diff:.3g} (> {tol:.3g}) on a batch of other sizes; "
            "the traced graph froze a shape or a data-dependent branch"
        )
