"""Runtime "compile": the eager model under ``torch.compile`` (inductor by default)."""

from __future__ import annotations

import functools
import shutil
import sysconfig
import warnings
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


@functools.cache
def _probe() -> tuple[bool, str]:
    # Inductor on CPU generates C++ and needs a working compiler: compile something tiny once.
    compiler = sysconfig.get_config_var("CC") or "cc"
    if not (shutil.which(compiler.split()[0]) or shutil.which("gcc") or shutil.which("g++")):
        return False, "torch.compile (inductor) needs a C/C++ compiler; none found on PATH"
    try:
        with warnings.catch_warnings():
            # inductor's imports touch deprecated torch.jit APIs; nothing a user can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            fn = torch.compile(lambda x: torch.relu(x) * 2 + 1, backend="inductor", dynamic=False)
            out = fn(torch.arange(-2.0, 6.0))
        if not torch.equal(out, torch.relu(torch.arange(-2.0, 6.0)) * 2 + 1):
            return False, "torch.compile produced a wrong result on a probe"
    except Exception as err:  # any failure of the toolchain means: not available here
        return False, f"torch.compile does not work here: {type(err).__name__}: {str(err)[:200]}"
    return True, ""


@RUNTIMES.register("compile")
class CompileRuntime(Runtime):
    """Options: device, backend ("inductor"), mode (None, "reduce-overhead", "max-autotune"),
    dynamic (None: specialise on the first shapes and recompile on new ones; True: one
    dynamic-shape graph), model. Precision fp32, or bf16 by autocast inside the compiled graph.
    The first call for each new shape compiles (seconds); warm up before timing."""

    name = "compile"
    precisions = ("fp32", "bf16")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return _probe()

    def __init__(
        self,
        export_dir: str | Path,
        *,
        device: str = "cpu",
        backend: str = "inductor",
        mode: str | None = None,
        dynamic: bool | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(export_dir, **kwargs)
        self.device = resolve_device(device)
        self.backend, self.mode, self.dynamic = backend, mode, dynamic
        self.module = graph_module(self.spec, self.graph.name, model).to(self.device)
        self.compiled = torch.compile(self.module, backend=backend, mode=mode, dynamic=dynamic)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = to_tensors(feed, self.graph.input_names, self.device)
        with torch_threads(self.threads), torch.no_grad(), autocast(self.device, self.precision):
            out = self.compiled(*args)
        return outputs_to_numpy(out)

    def _describe(self) -> dict[str, Any]:
        return {
            **torch_description(self.device, self.threads),
            "compile_backend": self.backend,
            "compile_mode": self.mode,
            "dynamic": self.dynamic,
        }
