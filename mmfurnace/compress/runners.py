"""Predictors: ``batch -> logits`` callables over eager PyTorch, onnxruntime or OpenVINO, so
every variant is measured through the same small interface."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from mmfurnace.data.batch import Batch


class TorchPredictor:
    """Eager PyTorch in eval mode. ``dtype``: the dtype float inputs are cast to (the model's
    weights already are); ``autocast``: run under ``torch.autocast(cpu, autocast)``. Logits
    come back as float32. ``fastpath=False`` turns off nn.TransformerEncoderLayer's fused
    inference path for the call (it reads ``linear.weight`` directly, which a torch.ao
    quantized Linear does not have as a tensor); the global flag is restored after."""

    runtime_name = "torch"

    def __init__(self, model: nn.Module, *, dtype: torch.dtype | None = None,
                 autocast: torch.dtype | None = None, fastpath: bool = True) -> None:
        self.model = model.eval()
        self.dtype = dtype
        self.autocast = autocast
        self.fastpath = fastpath

    def __call__(self, batch: Batch) -> Tensor:
        inputs = batch.inputs
        if self.dtype is not None:
            inputs = {m: x.to(self.dtype) if x.is_floating_point() else x for m, x in inputs.items()}
        region = (torch.autocast("cpu", dtype=self.autocast) if self.autocast is not None
                  else contextlib.nullcontext())
        with torch.no_grad(), region, mha_fastpath(self.fastpath):
            return self.model(inputs, batch.present, batch.valid).logits.float()


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Within the block nn.MultiheadAttention's fused inference path is ``enabled``; the
    global flag is restored after."""
    before = torch.backends.mha.get_fastpath_enabled()
    if before == enabled:
        yield
        return
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


class OvPredictor:
    """An export directory run by ``RUNTIMES["openvino"]`` (CPU, ``threads``); INT8 (QDQ)
    exports run on OpenVINO's own INT8 kernels."""

    runtime_name = "openvino"

    def __init__(self, export_dir: str | Path, *, threads: int | None = None) -> None:
        import mmfurnace.export.runtimes.openvino  # noqa: F401  (registers the runtime)
        from mmfurnace.export.runtimes.registry import RUNTIMES

        self.export_dir = Path(export_dir)
        self.runtime = RUNTIMES["openvino"](export_dir, threads=threads)

    def __call__(self, batch: Batch) -> Tensor:
        return torch.from_numpy(self.runtime.run(batch)).float()

    def settle(self) -> None:
        """Wait for the static-shape copies warm-up started (timing measures the steady state)."""
        self.runtime.wait_for_static()


class OrtPredictor:
    """An export directory run by ``RUNTIMES["onnxruntime"]`` (CPU EP, ``threads`` intra-op)."""

    runtime_name = "onnxruntime"

    def __init__(self, export_dir: str | Path, *, threads: int | None = None) -> None:
        import mmfurnace.export.runtimes.onnxruntime  # noqa: F401  (registers the runtime)
        from mmfurnace.export.runtimes.registry import RUNTIMES

        self.export_dir = Path(export_dir)
        self.runtime = RUNTIMES["onnxruntime"](export_dir, threads=threads, optimized_model=False)

    def __call__(self, batch: Batch) -> Tensor:
        return torch.from_numpy(self.runtime.run(batch)).float()
