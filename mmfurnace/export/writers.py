"""Writing one graph: ONNX (TorchScript-based exporter + fixes + onnx.checker) or TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from mmfurnace.errors import MMFurnaceError
from mmfurnace.export.spec import GraphSpec
from mmfurnace.export.traceable import traceable


class ExportError(MMFurnaceError, RuntimeError):
    """The model could not be exported faithfully (e.g. the traced graph disagrees with eager)."""


def to_onnx(
    wrapper: nn.Module,
    model: nn.Module,
    graph: GraphSpec,
    example: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
) -> list[str]:
    dynamic = {t.name: t.dynamic_axes for t in (*graph.inputs, *graph.outputs) if t.dynamic_axes}
    with warnings.catch_warnings(record=True) as caught, traceable(model), torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                input_names=graph.input_names,
                output_names=graph.output_names,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as err:  # exporter errors are many types; name the graph
            raise ExportError(
                f"ONNX export of graph {graph.name!r} failed: {type(err).__name__}: {err}"
            ) from err
    import onnx

    normalize_graph(path, graph)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"{path.name}: exported graph fails onnx.checker: {err}") from err
    return tracer_notes(caught, graph.name)


def normalize_graph(path: Path, graph: GraphSpec) -> None:
    """Fix what the TorchScript exporter gets wrong, in place.

    ``x.movedim(-1, 1)`` exports as Transpose perm [0, -1, 1], which ONNX forbids, and the
    exporter's own shape inference then stamps wrong sizes on later tensors. Negative perms are
    made non-negative, the stamped intermediate shapes dropped (ONNX re-infers them), and the
    graph outputs given the shapes the sidecar declares.
    """
    import onnx

    proto = onnx.load(str(path))
    changed = False
    for node in proto.graph.node:
        if node.op_type != "Transpose":
            continue
        for attr in node.attribute:
            if attr.name == "perm" and any(p < 0 for p in attr.ints):
                rank = len(attr.ints)
                fixed = [p % rank for p in attr.ints]
                del attr.ints[:]
                attr.ints.extend(fixed)
                changed = True
    if changed:
        del proto.graph.value_info[:]
    specs = {t.name: t for t in graph.outputs}
    for out in proto.graph.output:
        spec = specs[out.name]
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in spec.shape:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    onnx.save(proto, str(path))


def with_onnx_inputs(graph: GraphSpec, path: Path) -> GraphSpec:
    import onnx

    declared = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    return GraphSpec(
        graph.name,
        graph.inputs,
        graph.outputs,
        graph.files,
        tuple(n for n in graph.input_names if n in declared),
    )


def to_torchscript(
    wrapper: nn.Module, model: nn.Module, example: tuple[torch.Tensor, ...], path: Path
) -> list[str]:
    with warnings.catch_warnings(record=True) as caught, traceable(model), torch.no_grad():
        warnings.simplefilter("always")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return tracer_notes(caught, path.stem)


def tracer_notes(caught: list[warnings.WarningMessage], graph: str) -> list[str]:
    # TracerWarnings say where a Python value was frozen into the graph; keep them for the
    # sidecar (the verification below is what decides whether they mattered).
    notes = {
        f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0][:60]}…"
        for w in caught
        if w.category.__name__ == "TracerWarning"
    }
    return [f"{graph}: {n}" for n in sorted(notes)]
