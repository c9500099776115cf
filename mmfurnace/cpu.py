"""What this CPU executes: its instruction-set flags, asked of the CPU itself (CPUID), and what
they mean for ONNX Runtime's INT8 kernels.

Why CPUID and not /proc/cpuinfo: ONNX Runtime (MLAS) and PyTorch pick their kernels by CPUID,
so a format chosen for the CPU must be chosen from the same answer. /proc/cpuinfo is the host
kernel's view; under user-mode emulation (``qemu-x86_64 -cpu Haswell``) it still lists the
host's AVX-512 while the process executes AVX2 only. The flags come from PyTorch's bundled
cpuinfo library (``torch.cpu.get_capabilities()``, CPUID-based), with /proc/cpuinfo as the
fallback on a torch without it. Names follow /proc/cpuinfo (``avx512f``, ``avx512_vnni``).

``MMFURNACE_CPU_FLAGS="avx2,fma"`` (comma-separated) replaces the detected flags, to choose a
format for another CPU; the kernels ONNX Runtime runs still follow the real CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

ENV_OVERRIDE = "MMFURNACE_CPU_FLAGS"
# the flags INT8/BF16 kernels depend on, in the order reports list them
ISA_FLAGS = ("sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# torch.cpu.get_capabilities() key -> /proc/cpuinfo name (the rest are spelled alike)
# the short list printed next to every INT8 / BF16 number
REPORT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
_TORCH_NAMES = {"avx512_f": "avx512f", "avx512_bw": "avx512bw", "avx512_dq": "avx512dq",
                "avx512_vl": "avx512vl", "fma3": "fma"}
_AVX512_CORE = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})


@dataclass(frozen=True)
class CpuIsa:
    """arch: "x86_64", "aarch64", ...; flags: the ISA_FLAGS this CPU has; source: where they
    came from ("cpuid" via torch, "/proc/cpuinfo", or the environment override)."""

    arch: str
    flags: frozenset[str]
    source: str

    @property
    def x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")

    def listed(self, names: tuple[str, ...] = ISA_FLAGS) -> list[str]:
        """The flags this CPU has among ``names``, in that order (REPORT_FLAGS: the short list
        reports print next to INT8 numbers)."""
        return [f for f in names if f in self.flags]

    def describe(self) -> str:
        return f"{self.arch} [{', '.join(self.listed()) or 'none of ' + '/'.join(ISA_FLAGS[:3])}]"


def u8s8_kernel(isa: CpuIsa) -> str:
    """Which ONNX Runtime (MLAS) kernel multiplies U8 activations by S8 weights on ``isa``,
    mirroring MLAS's dispatch (onnxruntime/core/mlas/lib/platform.cpp):

    "amx"         AMX tiles (amx_tile + amx_int8): 32-bit sums, exact
    "avx512_vnni" AVX-512 core + VNNI (vpdpbusd): exact
    "avx512_core" AVX-512 BW/DQ/VL without VNNI (vpmaddubsw): saturates
    "avx_vnni"    AVX2 + AVX-VNNI, no AVX-512 core (Alder Lake): exact
    "avx2"        AVX2 without VNNI (vpmaddubsw): saturates
    "sse4_1"      older x86 (pmaddubsw): saturates
    "non-x86"     ARM and others (dot-product / widening kernels): exact

    vpmaddubsw adds each pair of adjacent u8 x s8 products in a signed 16-bit lane, clamped:
    255 x 127 x 2 = 64,770 does not fit in 32,767, so large activations against large weights
    are clipped (ONNX Runtime's quantization docs call it the saturation issue).
    """
    if not isa.x86:
        return "non-x86"
    f = isa.flags
    if f >= {"amx_tile", "amx_int8"}:
        return "amx"
    if f >= _AVX512_CORE:
        return "avx512_vnni" if "avx512_vnni" in f else "avx512_core"
    if "avx2" in f:
        return "avx_vnni" if "avx_vnni" in f else "avx2"
    return "sse4_1"


def u8s8_saturates(isa: CpuIsa) -> bool:
    """True where ONNX Runtime's U8S8 kernels sum in 16 bits (x86 without VNNI/AMX)."""
    return u8s8_kernel(isa) in ("avx512_core", "avx2", "sse4_1")


def cpu_isa() -> CpuIsa:
    """This CPU's ISA (cached per override value; see the module docstring)."""
    return _detect(os.environ.get(ENV_OVERRIDE))


@functools.cache
def _detect(override: str | None) -> CpuIsa:
    arch = platform.machine() or "unknown"
    if override is not None:
        flags = {f.strip().lower() for f in override.split(",") if f.strip()}
        return CpuIsa(arch, frozenset(flags), f"${ENV_OVERRIDE}")
    caps = _torch_capabilities()
    if caps is not None:
        names = {_TORCH_NAMES.get(k, k) for k, v in caps.items() if v is True}
        return CpuIsa(str(caps.get("architecture") or arch), frozenset(names & set(ISA_FLAGS)), "cpuid")
    return CpuIsa(arch, frozenset(_proc_cpuinfo_flags() & set(ISA_FLAGS)), "/proc/cpuinfo")


def _torch_capabilities() -> dict[str, object] | None:
    try:
        import torch

        return dict(torch.cpu.get_capabilities())  # torch >= 2.9; CPUID through cpuinfo
    except (ImportError, AttributeError, RuntimeError):
        return None


def _proc_cpuinfo_flags() -> set[str]:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return set()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (CPUID brand string via torch, else /proc/cpuinfo, else
    platform.processor())."""
    caps = _torch_capabilities() or {}
    if caps.get("cpu_name"):
        return str(caps["cpu_name"])
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"
