"""machine_info(): what a benchmark ran on — CPU, ISA flags, threads, library versions, GPU."""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any

from mmfurnace.cpu import cpu_isa, cpu_model, u8s8_kernel

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "numpy")


def machine_info() -> dict[str, Any]:
    """A JSON-serializable description of this machine and its inference libraries.

    cpu: model, logical cores, cores usable by this process (affinity), ISA flags of interest
    (by CPUID, as the kernels see them: mmfurnace.cpu; {} when none could be read), where
    they came from and which kernel ONNX Runtime multiplies U8 x S8 with; torch intra/inter-op
    threads; versions of the libraries that import (None when missing); GPU names when CUDA
    is visible.
    """
    cpu = _cpu()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "versions": {name: _version(name) for name in LIBRARIES},
        "gpus": _gpus(),
        # >> usable cores means neighbours share the CPU: timings are noisy, wall >> CPU time
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch_threads"] = {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
        }
    except ImportError:
        info["torch_threads"] = None
    return info


def _cpu() -> dict[str, Any]:
    isa = cpu_isa()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "model": cpu_model(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "isa": {flag: flag in isa.flags for flag in ISA_FLAGS} if isa.flags else {},
        "isa_source": isa.source,
        "u8s8_kernel": u8s8_kernel(isa),
    }


def _version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # ImportError, or a broken install raising something else
        return None
    if name == "openvino":
        get_version = getattr(module, "get_version", None)
        if get_version is not None:
            return str(get_version())
    return str(getattr(module, "__version__", "unknown"))


def _gpus() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
