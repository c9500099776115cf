"""Runtime "eager": the model in plain PyTorch — the reference every other backend is checked against."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfurnace.export.runtimes.base import Runtime
from mmfurnace.export.runtimes.registry import RUNTIMES
from mmfurnace.export.runtimes.torch_common import (
    autocast,
    graph_module,
    outputs_to_numpy,
    resolve_device,
    to_tensors,
    torch_description,
)
from mmfurnace.threads import torch_threads


@RUNTIMES.register("eager")
class EagerRuntime(Runtime):
    """Options: device ("cpu"/"cuda"), model (an already-built module instead of the export's
    weights). Precision: fp32; bf16 by autocast; fp16 by autocast on CUDA and by casting the
    weights to half on CPU (CPU autocast to fp16 covers too few ops to be representative)."""

    name = "eager"
    precisions = ("fp32", "bf16", "fp16")

    def __init__(
        self,
        export_dir: str | Path,
        *,
        device: str = "cpu",
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(export_dir, **kwargs)
        self.device = resolve_device(device)
        module = graph_module(self.spec, self.graph.name, model)
        self.half_weights = self.precision == "fp16" and self.device.type == "cpu"
        if self.half_weights:
            module = copy.deepcopy(module).half()  # never convert the caller's model in place
        self.module = module.to(self.device)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        float_dtype = torch.float16 if self.half_weights else None
        args = to_tensors(feed, self.graph.input_names, self.device, float_dtype)
        with (
            torch_threads(self.threads),
            torch.inference_mode(),
            autocast(self.device, "fp32" if self.half_weights else self.precision),
        ):
            out = self.module(*args)
        return outputs_to_numpy(out)

    def _describe(self) -> dict[str, Any]:
        return {
            **torch_description(self.device, self.threads),
            "precision_mode": "half weights"
            if self.half_weights
            else ("autocast" if self.precision != "fp32" else "fp32"),
        }
