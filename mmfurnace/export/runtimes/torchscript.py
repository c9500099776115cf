"""Runtime "torchscript": the traced ``<graph>.ts`` file, run by the TorchScript interpreter."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfurnace.export.runtimes.base import Runtime, wrap_engine_error
from mmfurnace.export.runtimes.registry import RUNTIMES
from mmfurnace.export.runtimes.torch_common import (
    outputs_to_numpy,
    resolve_device,
    to_tensors,
    torch_description,
)
from mmfurnace.threads import torch_threads


@RUNTIMES.register("torchscript")
class TorchScriptRuntime(Runtime):
    """Options: device. Precision fp32 (the trace is float32; it needs no Python model code)."""

    name = "torchscript"
    precisions = ("fp32",)

    def __init__(self, export_dir: str | Path, *, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(export_dir, **kwargs)
        self.device = resolve_device(device)
        self.path = self.spec.file(self.graph.name, "torchscript", verify=self.verify)
        try:
            with warnings.catch_warnings():
                # torch 2.x deprecates TorchScript in favour of torch.export; the format is what
                # this backend is for, so the warning carries no news for its users.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as err:  # RuntimeError from the TorchScript deserializer
            raise wrap_engine_error(self.path, err) from None

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = to_tensors(feed, self.graph.input_names, self.device)
        with torch_threads(self.threads), torch.inference_mode():
            out = self.module(*args)
        return outputs_to_numpy(out)

    def _describe(self) -> dict[str, Any]:
        return {
            **torch_description(self.device, self.threads),
            "file": self.path.name,
        }
