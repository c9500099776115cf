"""CPU ISA detection (CPUID through torch) and which ONNX Runtime U8S8 kernel each kind of CPU
gets. The format choice is tested for every kind with its flags: the tests do not depend on
the CPU they run on."""

from __future__ import annotations

import pytest

from mmfurnace import cpu
from mmfurnace.cpu import CpuIsa, cpu_isa, u8s8_kernel, u8s8_saturates

AVX512_CORE = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
KINDS = {  # name: (flags, MLAS U8S8 kernel, saturates)
    "sse4.1 only (pre-Haswell)": ({"sse4_1"}, "sse4_1", True),
    "AVX2 only (Haswell, AMD Zen 2/3)": ({"sse4_1", "avx2", "fma"}, "avx2", True),
    "AVX-512 without VNNI (Skylake-SP)": ({"sse4_1", "avx2", "fma", *AVX512_CORE}, "avx512_core", True),
    "AVX-512 + VNNI (Cascade Lake, Zen 4/5)": ({"avx2", "fma", *AVX512_CORE, "avx512_vnni"}, "avx512_vnni", False),
    "AVX-VNNI without AVX-512 (Alder Lake)": ({"avx2", "fma", "avx_vnni"}, "avx_vnni", False),
    # MLAS prefers its AVX-512 core kernel over AVX-VNNI when both exist: that one saturates
    "AVX-512 core without VNNI + AVX-VNNI": ({"avx2", *AVX512_CORE, "avx_vnni"}, "avx512_core", True),
    "AMX (Sapphire Rapids)": ({"avx2", *AVX512_CORE, "avx512_vnni", "amx_tile", "amx_int8"}, "amx", False),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_u8s8_kernel_of_each_cpu_kind(kind: str) -> None:
    flags, kernel, saturates = KINDS[kind]
    isa = CpuIsa("x86_64", frozenset(flags), "test")
    assert u8s8_kernel(isa) == kernel
    assert u8s8_saturates(isa) is saturates


def test_arm_never_saturates() -> None:
    isa = CpuIsa("aarch64", frozenset(), "test")
    assert u8s8_kernel(isa) == "non-x86"
    assert not u8s8_saturates(isa)


def _detect(monkeypatch, *, torch_caps, proc_flags=()) -> CpuIsa:
    monkeypatch.setattr(cpu, "_torch_capabilities", lambda: torch_caps)
    monkeypatch.setattr(cpu, "_proc_cpuinfo_flags", lambda: set(proc_flags))
    monkeypatch.delenv(cpu.ENV_OVERRIDE, raising=False)
    cpu._detect.cache_clear()
    try:
        return cpu_isa()
    finally:
        cpu._detect.cache_clear()


def test_detection_asks_cpuid_through_torch(monkeypatch) -> None:
    caps = {"architecture": "x86_64", "avx2": True, "fma3": True, "avx512_f": False, "avx512_vnni": False,
            "sse4_1": True, "num_physical_cores": 2, "cpu_name": "x"}
    # /proc/cpuinfo would say AVX-512 (the host's, under qemu-user): CPUID wins
    isa = _detect(monkeypatch, torch_caps=caps, proc_flags={"avx2", "avx512f", "avx512_vnni"})
    assert isa.source == "cpuid"
    assert isa.flags == {"avx2", "fma", "sse4_1"}  # torch's names mapped to /proc/cpuinfo's
    assert u8s8_kernel(isa) == "avx2"


def test_detection_falls_back_to_proc_cpuinfo(monkeypatch) -> None:
    isa = _detect(monkeypatch, torch_caps=None, proc_flags={"avx2", "avx512f", "avx512_vnni", "sse2"})
    assert isa.source == "/proc/cpuinfo"
    assert isa.flags == {"avx2", "avx512f", "avx512_vnni"}


def test_environment_overrides_the_detected_flags(monkeypatch) -> None:
    monkeypatch.setenv(cpu.ENV_OVERRIDE, "avx2, FMA")
    isa = cpu_isa()
    assert isa.flags == {"avx2", "fma"}
    assert isa.source == f"${cpu.ENV_OVERRIDE}"
    assert u8s8_saturates(isa) is isa.x86


def test_this_cpu_is_described() -> None:
    isa = cpu_isa()
    assert isa.arch
    assert set(isa.listed()) <= set(cpu.ISA_FLAGS)
    assert isa.describe().startswith(isa.arch)
