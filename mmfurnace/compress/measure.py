"""Measure variants side by side: accuracy, parameters, size on disk, MACs, latency, throughput.

Latency and throughput of every variant are measured in the same call on the same inputs,
interleaved (round-robin: one run of each variant per round), so a busy or throttling machine
slows every variant alike instead of favouring whichever ran first. Latency is per request at
batch 1 (p50/p95 over distinct real samples); throughput is samples/s at batch 32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mmfurnace.cpu import REPORT_FLAGS, cpu_isa, cpu_model, u8s8_kernel
from mmfurnace.data.batch import Batch, collate_samples
from mmfurnace.models.predict import predicted_accuracy
from mmfurnace.threads import torch_threads

Predict = Callable[[Batch], Tensor]  # batch -> logits (batch, classes), float32 on the CPU


@dataclass(frozen=True)
class Timing:
    """p50_ms / p95_ms: batch-1 latency; throughput: samples/s at ``batch_size``;
    cpu_throughput: the same per second of this process's CPU time (all its threads), which
    neighbours on a shared machine barely move while they stretch wall time."""

    p50_ms: float
    p95_ms: float
    throughput: float
    batch_size: int
    cpu_throughput: float | None = None


def count_params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Parameters (and buffers of quantized/packed layers are not counted); ``nonzero``
    counts only entries that are not exactly 0 (what unstructured pruning reduces)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, batch: Batch) -> int:
    """Multiply-accumulates of one forward pass over ``batch``, divided by its size (per
    sample). Counted by torch's FlopCounterMode (matmul, conv, attention; elementwise ops
    are not counted) as FLOPs / 2, with nn.TransformerEncoderLayer's fused inference path
    off (the counter does not see inside it). Padded positions count: pass real lengths."""
    from mmfurnace.compress.runners import mha_fastpath

    model_dtype = next(model.parameters()).dtype
    batch = _cast_batch(batch, model_dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), mha_fastpath(False), counter:
        model.forward_batch(batch)
    return int(counter.get_total_flops() // 2 // max(len(batch), 1))


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evaluate_predict(predict: Predict, batches: Iterable[Batch], *, multilabel: bool) -> float:
    """Accuracy (exact match for multi-label) of ``predict`` over ``batches``: the evaluation
    loop every variant and parent goes through (:func:`mmfurnace.models.predict.predictions`)."""
    return predicted_accuracy(predict, batches, None, multilabel=multilabel)


def sqnr_db(reference: Tensor, other: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference`` in dB (inf when equal)."""
    reference, other = reference.double(), other.double()
    noise = (reference - other).pow(2).sum()
    if float(noise) == 0.0:
        return float("inf")
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def split_samples(batch: Batch, count: int) -> list[Batch]:
    """The first ``count`` rows of ``batch`` as batch-1 Batches (for latency), each trimmed to
    its own length (a real single request carries no padding)."""
    out = []
    for i in range(min(count, len(batch))):
        inputs = {}
        for m, x in batch.inputs.items():
            row = x[i]
            if m in batch.valid:
                row = row[: max(int(batch.valid[m][i].sum()), 1)]
            if bool(batch.present[m][i]):
                inputs[m] = row
        out.append(_one(inputs, batch.labels[i], sorted(batch.present)))
    return out


def _one(inputs: dict[str, Tensor], label: Tensor, modalities: Sequence[str]) -> Batch:
    from mmfurnace.data.batch import Sample

    return collate_samples([Sample(inputs=inputs, label=label)], modalities)




def benchmark(
    predictors: dict[str, Predict],
    *,
    singles: Sequence[Batch],
    batch: Batch,
    rounds: int = 20,
    warmup: int = 2,
    threads: int | None = None,
    calls_per_round: int = 5,
) -> dict[str, Timing]:
    """Time every predictor on the same inputs, interleaved.

    singles: batch-1 requests; each warm-up round runs every predictor on all of them, each
    timed round on the next one (latency p50/p95 over all rounds); predictors with a
    ``settle()`` (OpenVINO, compiling static-shape copies in the background) are waited for
    after warm-up. batch: the throughput batch (e.g. 32 rows); each round runs it
    ``calls_per_round`` times back to back per predictor, after one untimed call, and
    throughput is the median over rounds. Rounds interleave the predictors, so a slow spell of a
    shared machine hits all of them; within a round a predictor runs as a loaded server runs
    it, batch after batch. Timing one call right after another model's (as this did before)
    measured cold caches, which costs a small model proportionally more: a 67k-parameter
    student measured 2.8x its teacher that way and 3.1-3.3x back to back. ``threads``: torch
    intra-op threads for the duration (ORT sessions take theirs at creation).
    Returns name -> Timing.
    """
    assert singles, "need at least one batch-1 request"
    assert calls_per_round >= 1, "calls_per_round must be at least 1"
    names = list(predictors)
    lat: dict[str, list[float]] = {n: [] for n in names}
    thr: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with torch_threads(threads), torch.no_grad():
        for _ in range(warmup):
            for name in names:
                for single in singles:
                    predictors[name](single)
                predictors[name](batch)
        for predict in predictors.values():  # OpenVINO: its static-shape copies are ready
            getattr(predict, "settle", lambda: None)()
        for r in range(rounds):
            single = singles[r % len(singles)]
            # rotate the start so no variant always runs right after the same neighbour
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                started = time.perf_counter()
                predictors[name](single)
                lat[name].append(time.perf_counter() - started)
            for name in order:
                predictors[name](batch)
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(calls_per_round):
                    predictors[name](batch)
                thr[name].append((time.perf_counter() - started) / calls_per_round)
                cpu[name].append((time.process_time() - cpu_started) / calls_per_round)
    return {
        n: Timing(
            p50_ms=float(np.percentile(lat[n], 50) * 1e3),
            p95_ms=float(np.percentile(lat[n], 95) * 1e3),
            throughput=float(len(batch) / np.median(thr[n])),
            batch_size=len(batch),
            cpu_throughput=float(len(batch) / np.median(cpu[n])) if np.median(cpu[n]) > 0 else None,
        )
        for n in names
    }


def cpu_info() -> dict[str, object]:
    """The CPU model, the ISA flags INT8/BF16 speed and exactness depend on (avx2, avx512f,
    avx512_vnni, avx_vnni, avx512_bf16, amx_int8; read by CPUID, see mmfurnace.cpu), which
    kernel ONNX Runtime multiplies U8 x S8 with, and torch's intra-op threads."""
    isa = cpu_isa()
    return {"cpu": cpu_model(), "isa": isa.listed(REPORT_FLAGS), "isa_source": isa.source,
            "u8s8_kernel": u8s8_kernel(isa), "threads": torch.get_num_threads()}


def _cast_batch(batch: Batch, dtype: torch.dtype) -> Batch:
    if dtype == torch.float32:
        return batch
    inputs = {m: x.to(dtype) if x.is_floating_point() else x for m, x in batch.inputs.items()}
    return Batch(inputs=inputs, valid=batch.valid, present=batch.present, labels=batch.labels)
