"""FLOPs per model part, the measured peak FLOP/s of a device, and the fraction of it reached.

FLOPs are counted by torch's ``FlopCounterMode`` (matmul, convolution, attention; elementwise
ops and bias adds are not counted), with PyTorch's fused transformer fast path switched off
while counting (the counter cannot see inside it). MACs = FLOPs / 2. The peak is *measured* with a large
matmul in the same process, not read from a spec sheet, so "utilization" compares like with
like on the machine at hand (same threads, same load).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mmfurnace.bench.timing import median, time_repeated
from mmfurnace.data.batch import Batch


def count_flops(model: nn.Module, batch: Batch | Tensor | tuple[Any, ...]) -> dict[str, Any]:
    """FLOPs of one forward pass over ``batch``, per part and in total.

    For a MultimodalClassifier (anything with ``encoders``, ``fusion``, ``head`` and
    ``encode``) each part runs on its own under a counter: parts are ``encoder.<modality>``,
    ``fusion``, ``head``; ``total`` is their sum (the inference path, batch -> logits).
    The consistency projections, used only by the training loss, are reported apart as
    ``projections`` and not in ``total``. Any other module is run as ``model(batch)`` (a
    tuple is unpacked) and only ``total`` is given.

    Returns {"flops": {part: n, ..., "total": n}, "macs": {same keys: n / 2},
    "batch_size": rows, "flops_per_sample": total / rows}.
    """
    device, dtype = _device_dtype(model)
    flops: dict[str, int] = {}
    with torch.no_grad():
        if _is_classifier(model) and isinstance(batch, Batch):
            batch = _prepare(batch, device, dtype)
            features = {}
            for m in model.modalities:
                if m not in batch.inputs:
                    continue
                features[m], flops[f"encoder.{m}"] = _counted(
                    lambda m=m: model.encode(m, batch.inputs[m], batch.valid.get(m), batch.present.get(m))
                )
            fusion_out, flops["fusion"] = _counted(lambda: model.fusion(features, batch.present))
            _, flops["head"] = _counted(lambda: model.head(fusion_out.fused))
            total = sum(flops.values())
            projections = getattr(model, "projections", None)
            if projections is not None:
                _, flops["projections"] = _counted(
                    lambda: [projections[m](f.pooled) for m, f in features.items()]
                )
            flops["total"] = total
            rows = len(batch)
        else:
            args = batch if isinstance(batch, tuple) else (batch,)
            _, flops["total"] = _counted(lambda: model(*args))
            first = args[0]
            rows = len(first) if isinstance(first, (Tensor, Batch)) else 1
    return {
        "flops": flops,
        "macs": {k: v // 2 for k, v in flops.items()},
        "batch_size": rows,
        "flops_per_sample": flops["total"] / max(rows, 1),
    }


def measure_peak_flops(
    device: torch.device | str = "cpu",
    *,
    size: int = 2048,
    dtype: torch.dtype = torch.float32,
    iters: int = 5,
    warmup: int = 2,
) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul on ``device``: 2 * size^3 / median
    time. A practical peak for this device, dtype and thread setting, measured now."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    with torch.no_grad():
        seconds = median(time_repeated(lambda: torch.mm(a, b, out=out), warmup=warmup, repeats=iters, device=device))
    return 2.0 * size**3 / seconds


def utilization(achieved_flops_per_s: float, peak: float) -> float:
    """``achieved / peak`` (0 when the peak is not positive)."""
    return float(achieved_flops_per_s / peak) if peak > 0 else 0.0


def flops_summary(flops_per_step: float, compute_seconds: float, peak: float | None) -> dict[str, float | None]:
    """Achieved FLOP/s of ``flops_per_step`` done in ``compute_seconds`` and, given a measured
    ``peak``, its fraction of it."""
    achieved = flops_per_step / compute_seconds if compute_seconds > 0 else 0.0
    return {
        "flops_per_step": float(flops_per_step),
        "achieved_flops_per_s": float(achieved),
        "peak_flops_per_s": None if peak is None else float(peak),
        "utilization": None if peak is None else utilization(achieved, peak),
    }


def format_flops(value: float) -> str:
    """1.23 GFLOP-style text for a count or rate."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} "


def _counted(fn: Any) -> tuple[Any, int]:
    # In eval mode without grad, nn.MultiheadAttention and nn.TransformerEncoderLayer take a
    # fused "fast path" (aten._native_multi_head_attention, _transformer_encoder_layer_fwd)
    # that FlopCounterMode has no formula for: a transformer would count as 0 FLOPs. The
    # regular path does the same matmuls, so count on it (the flag is restored after) --
    # and give the counter the formula of the CPU attention kernel that path calls.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
        with counter:
            out = fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out, int(counter.get_total_flops())


def _cpu_attention_formulas() -> dict[Any, Any]:
    # torch registers FLOP formulas for the CUDA fused attention kernels but not for the CPU
    # one that scaled_dot_product_attention dispatches to in eval mode: same math, same count.
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _sdpa_flop}


def _sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _is_classifier(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("encoders", "fusion", "head", "encode", "modalities"))


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _prepare(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    def cast(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in d.items()}

    return Batch(
        inputs=cast(batch.inputs),
        valid={k: v.to(device) for k, v in batch.valid.items()},
        present={k: v.to(device) for k, v in batch.present.items()},
        labels=batch.labels.to(device),
    )
