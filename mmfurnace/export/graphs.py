"""Which graphs an export holds, their flat interfaces, and example tensors to trace them with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmfurnace.data.batch import Batch
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.export.inputs import flatten_batch
from mmfurnace.export.spec import (
    BATCH_AXIS,
    FULL_GRAPH,
    FUSION_GRAPH,
    GraphSpec,
    TensorSpec,
    encoded_axis,
    encoder_graph,
    seq_axis,
)


def sequence_modalities(info: DatasetInfo, modalities: Sequence[str]) -> list[str]:
    return [m for m in modalities if None in info.input_shapes[m]]


def data_spec(info: DatasetInfo, m: str) -> TensorSpec:
    shape = info.input_shapes[m]
    if None in shape and (shape.index(None) != 0 or shape.count(None) > 1):
        raise InputError(f"cannot export {m!r} with shape {shape}: only the first axis may vary")
    dims = tuple(seq_axis(m) if d is None else int(d) for d in shape)
    return TensorSpec(m, info.input_dtypes.get(m, "float32"), (BATCH_AXIS, *dims))


def mask_spec(name: str, axis: str) -> TensorSpec:
    return TensorSpec(name, "bool", (BATCH_AXIS, axis))


def present_spec(m: str) -> TensorSpec:
    return TensorSpec(f"{m}_present", "bool", (BATCH_AXIS,))


def plan_graphs(
    model: nn.Module, info: DatasetInfo, modalities: list[str], example: Batch, split: bool
) -> list[GraphSpec]:
    sequences = sequence_modalities(info, modalities)
    logits = TensorSpec("logits", "float32", (BATCH_AXIS, info.num_classes))
    full_inputs: list[TensorSpec] = []
    for m in modalities:
        full_inputs.append(data_spec(info, m))
        if m in sequences:
            full_inputs.append(mask_spec(f"{m}_mask", seq_axis(m)))
        full_inputs.append(present_spec(m))
    graphs = [GraphSpec(FULL_GRAPH, tuple(full_inputs), (logits,), {})]
    if not split:
        return graphs
    if not (hasattr(model, "encode") and hasattr(model, "fuse")):
        raise InputError(f"{type(model).__name__} has no encode/fuse; export it with split=False")
    fusion_inputs: list[TensorSpec] = []
    with torch.no_grad():
        for m in modalities:
            out = model.encode(m, example.inputs[m], example.valid.get(m), example.present[m])
            steps: int | str = encoded_axis(m) if m in sequences else int(out.sequence.shape[1])
            dim = int(out.sequence.shape[-1])
            outputs = [
                TensorSpec(f"{m}_sequence", "float32", (BATCH_AXIS, steps, dim)),
                TensorSpec(f"{m}_pooled", "float32", (BATCH_AXIS, int(out.pooled.shape[-1]))),
            ]
            if out.valid is not None:
                if m not in sequences:
                    steps = encoded_axis(m)  # a mask that varies per row: keep the axis named
                    outputs[0] = TensorSpec(f"{m}_sequence", "float32", (BATCH_AXIS, steps, dim))
                outputs.append(mask_spec(f"{m}_sequence_mask", str(steps)))
            inputs = [data_spec(info, m)]
            if m in sequences:
                inputs.append(mask_spec(f"{m}_mask", seq_axis(m)))
            inputs.append(present_spec(m))
            graphs.append(GraphSpec(encoder_graph(m), tuple(inputs), tuple(outputs), {}))
            fusion_inputs += [*outputs, present_spec(m)]
    graphs.append(GraphSpec(FUSION_GRAPH, tuple(fusion_inputs), (logits,), {}))
    return graphs


def flat_example(
    model: nn.Module, modalities: list[str], example: Batch, split: bool
) -> dict[str, torch.Tensor]:
    """Every flat tensor any graph takes, for ``example``: its inputs and encoder outputs."""
    flat = flatten_batch(example)
    if split:
        with torch.no_grad():
            for m in modalities:
                out = model.encode(m, example.inputs[m], example.valid.get(m), example.present[m])
                flat[f"{m}_sequence"], flat[f"{m}_pooled"] = out.sequence, out.pooled
                if out.valid is not None:
                    flat[f"{m}_sequence_mask"] = out.valid
    return flat


def graph_args(graph: GraphSpec, flat: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(flat[name] for name in graph.input_names)
