"""Quantization-aware training: fake-quant on every Conv/Linear (and attention projection),
fine-tune, then convert through ONNX QDQ to onnxruntime's INT8 kernels.

Which library: torch.ao.quantization's ``FakeQuantize`` modules (observers + straight-through
fake quantization), attached *without swapping modules*:

- weights: a ``torch.nn.utils.parametrize`` parametrization (per-output-channel symmetric
  INT8), so code that reads ``linear.weight`` directly — ``nn.MultiheadAttention`` reads
  ``in_proj_weight`` and ``out_proj.weight`` that way — sees the fake-quantized weight too;
- activations: a forward pre-hook fake-quantizing the layer's input (per-tensor asymmetric
  UINT8, the layout ORT's x86 kernels want: U8 activations x S8 weights).

Not torch.ao's ``prepare_qat_fx`` (symbolic tracing fails on dict inputs and data-dependent
masks) nor eager ``prepare_qat``/``convert`` (it needs QuantStubs around every float island
and cannot reach ``nn.MultiheadAttention``'s projections); torch.ao.quantization is also
deprecated in favour of torchao, whose CPU INT8 path runs through torch.compile.

Conversion: the TorchScript ONNX exporter writes each ``fake_quantize_per_*_affine`` as a
QuantizeLinear/DequantizeLinear pair, i.e. a QDQ model, which onnxruntime fuses into INT8
kernels (QLinearConv, MatMulIntegerToFloat, ...) exactly as it does for ``quantize_static``
output. The learned (observed) ranges are therefore the ones the deployed graph uses.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torch.nn.utils import parametrize

from mmfurnace.data.batch import Batch

FilterFn = Callable[[nn.Module, str], bool]
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _activation_fake_quant() -> FakeQuantize:
    # Full 0..255 range in every INT8 format: where U8xS8 kernels saturate (x86 without
    # VNNI) the weights are what gets narrower (reduce_range), as ORT's quantizer does it.
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine, reduce_range=False,
    )


def _weight_fake_quant(reduce_range: bool = False) -> FakeQuantize:
    # reduce_range: 7-bit weights, so a pair of u8 x s7 products fits a 16-bit lane
    low, high = (-64, 63) if reduce_range else (-128, 127)
    return FakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=low, quant_max=high,
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
    )


class WeightFakeQuant(nn.Module):
    """Parametrization: weight -> fake_quant(weight), per output channel (axis 0); 7-bit
    with ``reduce_range``."""

    def __init__(self, reduce_range: bool = False) -> None:
        super().__init__()
        self.fake_quant = _weight_fake_quant(reduce_range)

    def forward(self, weight: Tensor) -> Tensor:
        return self.fake_quant(weight)


class InputFakeQuant(nn.Module):
    """Holds the activation FakeQuantize of a layer's input; applied by a forward pre-hook."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_quant = _activation_fake_quant()

    def __call__(self, module: nn.Module, args: tuple) -> tuple:  # type: ignore[override]
        first, *rest = args
        return (self.fake_quant(first), *rest)


class OutputFakeQuant(nn.Module):
    """Fake-quantizes a Conv's output (forward hook): onnxruntime fuses DQ -> Conv -> Q into
    QLinearConv only when the output is quantized too (MatMul has MatMulIntegerToFloat)."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_quant = _activation_fake_quant()

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:  # type: ignore[override]
        return self.fake_quant(output)


def default_filter(module: nn.Module, name: str, *, min_reduction: int = 32) -> bool:
    """Every Conv1d/Conv2d/Linear and every nn.MultiheadAttention, except the consistency
    projections (they do not reach the logits, so they are not in the exported graph) and
    layers whose dot products are shorter than ``min_reduction`` (see
    Int8StaticConfig.min_reduction)."""
    if name.startswith("projections.") or name == "projections":
        return False
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim >= min_reduction
    if isinstance(module, QUANTIZABLE):
        return reduction_length(module) >= min_reduction
    return False


def reduction_length(module: nn.Module) -> int:
    """Length of each dot product a Conv/Linear computes (in_channels/groups x kernel size)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * math.prod(module.kernel_size)


def prepare_qat_(model: nn.Module, filter_fn: FilterFn | None = None, *, reduce_range: bool = False) -> list[str]:
    """Attach fake quantization in place to the layers ``filter_fn(module, name)`` selects
    (default :func:`default_filter`); ``reduce_range``: 7-bit weights (the u8s8-reduce-range
    INT8 format). Returns the names of the layers prepared.

    Conv/Linear: weight parametrized + input fake-quant. nn.MultiheadAttention: in_proj and
    out_proj weights parametrized + the query fake-quantized (self-attention: q = k = v).
    """
    keep = filter_fn or default_filter
    # nn.MultiheadAttention never calls its out_proj (it reads the weight): handled with it.
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    prepared = []
    for name, module in list(model.named_modules()):
        if id(module) in inside_mha or not keep(module, name) or hasattr(module, "input_fake_quant"):
            continue
        if isinstance(module, nn.MultiheadAttention):
            if not module._qkv_same_embed_dim:
                continue  # separate q/k/v weights: rare, left in float
            parametrize.register_parametrization(module, "in_proj_weight", WeightFakeQuant(reduce_range))
            parametrize.register_parametrization(module.out_proj, "weight", WeightFakeQuant(reduce_range))
        elif isinstance(module, QUANTIZABLE):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant(reduce_range))
        else:
            continue
        hook = InputFakeQuant()
        module.input_fake_quant = hook  # registered as a submodule, so observers are saved/moved
        module.register_forward_pre_hook(hook)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            out_hook = OutputFakeQuant()
            module.output_fake_quant = out_hook
            module.register_forward_hook(out_hook)
        prepared.append(name)
    return prepared


def fake_quants(model: nn.Module) -> Iterator[FakeQuantize]:
    return (m for m in model.modules() if isinstance(m, FakeQuantize))


def freeze_observers_(model: nn.Module) -> None:
    """Stop range tracking: ranges stay fixed while the weights keep training."""
    for fq in fake_quants(model):
        fq.disable_observer()


def enable_observers_(model: nn.Module) -> None:
    for fq in fake_quants(model):
        fq.enable_observer()


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> None:
    """Initialise the observers' ranges from real batches (forward only, eval mode)."""
    was_training = model.training
    model.eval()
    enable_observers_(model)
    try:
        for batch in batches:
            model.forward_batch(batch.to(device))
    finally:
        model.train(was_training)


def strip_qat_(model: nn.Module) -> None:
    """Remove the fake quantization, keeping the fine-tuned float weights (the FP32 model
    QAT produced; the INT8 one is the exported QDQ graph)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        for attr, hooks in (("input_fake_quant", module._forward_pre_hooks),
                            ("output_fake_quant", module._forward_hooks)):
            hook = module._modules.get(attr)
            if hook is None:
                continue
            for key, fn in list(hooks.items()):
                if fn is hook:
                    del hooks[key]
            delattr(module, attr)


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Observers off (their in-place range updates do not export) while the model is traced."""
    states = [(fq, bool(fq.observer_enabled[0])) for fq in fake_quants(model)]
    freeze_observers_(model)
    try:
        yield model
    finally:
        for fq, on in states:
            if on:
                fq.enable_observer()


def fold_weight_quantize(onnx_path: str | Path) -> int:
    """Store fake-quantized weights as INT8 in the exported graph, in place.

    The exporter writes each weight as FP32 initializer -> QuantizeLinear -> DequantizeLinear;
    a QuantizeLinear whose inputs are all constants is evaluated here and replaced by its INT8
    result (DQ stays), so the file holds 1 byte per weight, as ``quantize_static`` output does.
    Returns the number of weights folded.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from mmfurnace.compress.int8_weights import drop_unused_initializers, graph_constants

    path = Path(onnx_path)
    proto = onnx.load(str(path))
    graph = proto.graph
    consts = graph_constants(graph)
    folded, keep = 0, []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3 and all(i in consts for i in node.input):
            w, scale, zero = (consts[i] for i in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            if scale.ndim == 1 and scale.size > 1:
                shape[axis % w.ndim] = -1
            info = np.iinfo(zero.dtype)
            q = np.clip(np.rint(w / scale.reshape(shape)) + zero.reshape(shape), info.min, info.max).astype(zero.dtype)
            graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
            folded += 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    drop_unused_initializers(graph)
    onnx.save(proto, str(path))
    return folded
