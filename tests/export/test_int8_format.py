"""Which INT8 format is chosen for each kind of CPU, what is recorded, and what loading a model
quantized for one CPU on another says and does."""

from __future__ import annotations

import pytest

from mmfurnace.cpu import CpuIsa
from mmfurnace.errors import ConfigError
from mmfurnace.export.int8_format import (
    INT8_FORMATS,
    choose_int8_format,
    load_advice,
    resolve_int8_format,
)
from tests.test_cpu import KINDS

VNNI = CpuIsa("x86_64", frozenset({"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}), "test")
AVX2 = CpuIsa("x86_64", frozenset({"avx2", "fma"}), "test")
ARM = CpuIsa("aarch64", frozenset(), "test")


@pytest.mark.parametrize("kind", list(KINDS))
def test_auto_format_for_each_cpu_kind(kind: str) -> None:
    flags, _, saturates = KINDS[kind]
    fmt, why = choose_int8_format(CpuIsa("x86_64", frozenset(flags), "test"))
    # saturating U8S8 kernels get 7-bit weights; exact ones keep the full 8 bits
    assert fmt.name == ("u8s8-reduce-range" if saturates else "u8s8")
    assert fmt.exact_everywhere is saturates
    assert why


def test_arm_keeps_full_range() -> None:
    assert choose_int8_format(ARM)[0].name == "u8s8"


def test_record_names_the_format_the_request_and_the_cpu() -> None:
    auto = resolve_int8_format("auto", AVX2)
    assert auto["format"] == "u8s8-reduce-range"
    assert auto["reduce_range"] is True
    assert auto["requested"] == "auto"
    assert auto["quantized_on"]["u8s8_kernel"] == "avx2"
    assert auto["quantized_on"]["flags"] == ["avx2", "fma"]
    forced = resolve_int8_format("u8u8", VNNI)  # a user override wins over the CPU
    assert (forced["format"], forced["weights"], forced["requested"]) == ("u8u8", "u8", "u8u8")


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="u8s8-reduce-range"):
        resolve_int8_format("int4", VNNI)


def test_u8s8_model_on_a_cpu_without_vnni_warns_and_turns_on_precision_mode() -> None:
    made_on_vnni = resolve_int8_format("auto", VNNI)
    advice = load_advice(made_on_vnni, AVX2)
    assert advice.precision_mode
    assert "saturate" in advice.warning
    assert "u8s8-reduce-range" in advice.warning  # the fix is named
    assert "avx2" in advice.warning


@pytest.mark.parametrize("fmt", ["u8s8-reduce-range", "u8u8"])
def test_formats_exact_everywhere_need_no_fix_on_avx2(fmt: str) -> None:
    advice = load_advice(resolve_int8_format(fmt, VNNI), AVX2)
    assert advice.warning is None
    # ORT's precision mode leaves 7-bit and U8 weights alone: on for safety, costs nothing
    assert advice.precision_mode


def test_reduce_range_model_on_a_vnni_cpu_says_requantizing_gains_precision() -> None:
    advice = load_advice(resolve_int8_format("auto", AVX2), VNNI)
    assert not advice.precision_mode
    assert "full 8-bit weights" in advice.warning
    assert "accurate as it is" in advice.warning


def test_matching_cpu_and_fp32_models_are_silent() -> None:
    assert load_advice(resolve_int8_format("auto", VNNI), VNNI) == load_advice(None, VNNI)
    assert load_advice(None, VNNI).warning is None
    assert not load_advice(None, VNNI).precision_mode
    assert load_advice(None, AVX2).precision_mode  # an un-recorded INT8 file is made exact too
    assert load_advice(None, AVX2).warning is None


def test_every_format_is_documented() -> None:
    assert set(INT8_FORMATS) == {"u8s8", "u8s8-reduce-range", "u8u8"}
    assert all(f.doc for f in INT8_FORMATS.values())
