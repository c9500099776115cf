"""The "u8u8" INT8 format: a quantized ONNX graph's S8 weights stored as U8.

``w_u8 = w_s8 + 128`` with the zero point moved by the same 128 gives the same dequantized
weights, so every product is unchanged; what changes is the kernel ONNX Runtime picks: its
U8U8 kernels widen to 16 bits before multiplying and never saturate, on any CPU. This is the
rewrite ONNX Runtime's ``Avx2WeightS8ToU8Transformer`` does inside a session in precision mode,
done once on the file so the artefact is exact with any runtime and any session options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# op type -> (weight input, weight zero-point input)
WEIGHT_INPUTS = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3)}


def weights_to_u8(src: str | Path, dst: str | Path) -> int:
    """Rewrite ``src``'s S8 weight initializers (inputs of DequantizeLinear / MatMulInteger)
    as U8 with zero points + 128 and save to ``dst``. Returns how many weights were rewritten."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    consts = graph_constants(graph)
    added: dict[str, str] = {}  # old name -> its U8 twin (weights and zero points may be shared)
    rewritten = 0

    def twin(name: str, values: np.ndarray) -> str:
        if name not in added:
            added[name] = f"{name}_u8"
            shifted = (values.astype(np.int16) + 128).astype(np.uint8)
            graph.initializer.append(numpy_helper.from_array(shifted, added[name]))
        return added[name]

    for node in graph.node:
        if node.op_type not in WEIGHT_INPUTS:
            continue
        w_idx, zp_idx = WEIGHT_INPUTS[node.op_type]
        if len(node.input) <= w_idx or node.input[w_idx] not in inits:
            continue  # an activation, not a weight
        weight = consts[node.input[w_idx]]
        zp = node.input[zp_idx] if len(node.input) > zp_idx else ""
        if weight.dtype != np.int8 or (zp and (zp not in consts or consts[zp].dtype != np.int8)):
            continue  # already unsigned, or a zero point computed at run time
        if zp:
            zero = consts[zp]
        else:  # absent = 0, shaped like the scale (DequantizeLinear) or a scalar (MatMulInteger)
            scale = consts.get(node.input[1]) if node.op_type == "DequantizeLinear" else None
            zero = np.zeros(() if scale is None else scale.shape, dtype=np.int8)
            zp = f"{node.name or node.output[0]}_zero_point"
        new_w, new_zp = twin(node.input[w_idx], weight), twin(zp, zero)
        while len(node.input) <= zp_idx:
            node.input.append("")  # optional inputs before the zero point stay unset
        node.input[w_idx], node.input[zp_idx] = new_w, new_zp
        rewritten += 1
    drop_unused_initializers(graph)
    onnx.save(model, str(dst))
    return rewritten


def drop_unused_initializers(graph: Any) -> None:
    """Remove the initializers no node or graph output reads any more, in place."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    alive = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)


def graph_constants(graph: Any) -> dict[str, np.ndarray]:
    """An ONNX graph's initializers, Constant node outputs and Identities of them, by name
    (the TorchScript exporter passes constants through Identity nodes)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts
