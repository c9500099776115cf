"""INT8 formats for ONNX Runtime's CPU kernels, which one is exact on which CPU, and what to
do when a model quantized for one CPU is loaded on another.

A format is chosen when a model is quantized (``compress``, the ``onnxruntime`` runtime's int8
precision) and recorded in the variant's export.json under ``compression.int8`` (the
config's ``int8_format`` keeps what was asked, e.g. "auto"):

    u8s8               U8 activations x S8 weights, 8 bits each: the fastest kernels, exact
                       where the CPU sums u8 x s8 products in 32 bits (AVX-512 VNNI, AVX-VNNI,
                       AMX, ARM); on other x86 CPUs (AVX2 or AVX-512 without VNNI) pairs of
                       products are summed in 16 bits and clipped: the demo model lost 22 points
    u8s8-reduce-range  S8 weights in 7 bits ([-64, 64], ORT's ``reduce_range``): a pair of
                       products fits in 16 bits, so the same fast kernels are exact everywhere;
                       weights are half as fine
    u8u8               the u8s8 model with every weight stored as U8 (w + 128, zero point + 128):
                       the same products, run by ORT's U8U8 kernels, which widen to 16 bits
                       before multiplying: exact everywhere, slower than U8S8

``choose_int8_format(isa)``: u8s8 where it is exact, u8s8-reduce-range elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmfurnace.cpu import CpuIsa, cpu_isa, u8s8_kernel, u8s8_saturates
from mmfurnace.errors import ConfigError

AUTO = "auto"
RECORD_KEY = "int8"  # export.json / compression.json: compression.int8 = resolve_int8_format(...)
# ONNX Runtime session option that rewrites S8 weights outside [-64, 64] to U8 (U8U8 kernels)
# on CPUs whose U8S8 kernels saturate; it leaves 7-bit weights alone.
ORT_PRECISION_MODE = "session.x64quantprecision"


class Int8FormatWarning(UserWarning):
    """An INT8 model runs on a CPU it was not quantized for (see :func:`load_advice`)."""


@dataclass(frozen=True)
class Int8Format:
    """name; weights: "s8" | "u8" (activations are always U8); reduce_range: 7-bit weights."""

    name: str
    weights: str
    reduce_range: bool
    doc: str

    @property
    def exact_everywhere(self) -> bool:
        return self.reduce_range or self.weights == "u8"


INT8_FORMATS: dict[str, Int8Format] = {
    f.name: f
    for f in (
        Int8Format("u8s8", "s8", False,
                   "U8 activations x S8 weights; exact only with VNNI/AMX on x86 (or on ARM)"),
        Int8Format("u8s8-reduce-range", "s8", True,
                   "S8 weights in 7 bits: the fast U8S8 kernels cannot saturate on any CPU"),
        Int8Format("u8u8", "u8", False,
                   "weights stored as U8: ORT's U8U8 kernels, exact on every CPU, slower"),
    )
}


def check_format_name(value: str, *, where: str) -> None:
    """ConfigError unless ``value`` is "auto" or a known format."""
    allowed = (AUTO, *INT8_FORMATS)
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def choose_int8_format(isa: CpuIsa) -> tuple[Int8Format, str]:
    """The format quantization uses on ``isa`` and why (one sentence)."""
    kernel = u8s8_kernel(isa)
    if u8s8_saturates(isa):
        return INT8_FORMATS["u8s8-reduce-range"], (
            f"this CPU's U8S8 kernel ({kernel}, no VNNI) sums pairs of products in 16 bits and "
            "saturates with 8-bit weights; 7-bit weights cannot")
    return INT8_FORMATS["u8s8"], f"this CPU's U8S8 kernel ({kernel}) sums in 32 bits: exact"


def resolve_int8_format(requested: str, isa: CpuIsa | None = None) -> dict[str, Any]:
    """The record written to export.json's ``compression.int8``: the format used, what was asked
    ("auto" or a name), the CPU it was chosen on and why."""
    check_format_name(requested, where="int8_format")
    isa = isa or cpu_isa()
    if requested == AUTO:
        fmt, why = choose_int8_format(isa)
    else:
        fmt, why = INT8_FORMATS[requested], "asked for"
    return {"format": fmt.name, "weights": fmt.weights, "reduce_range": fmt.reduce_range,
            "requested": requested, "reason": why, "quantized_on": _isa_record(isa)}


def _isa_record(isa: CpuIsa) -> dict[str, Any]:
    return {"arch": isa.arch, "flags": isa.listed(), "u8s8_kernel": u8s8_kernel(isa), "source": isa.source}


SATURATES, SUBOPTIMAL = "saturates", "suboptimal"


@dataclass(frozen=True)
class LoadAdvice:
    """What loading an INT8 model on this CPU needs: a warning to show (None: nothing to
    say), whether to switch on ORT's precision mode (:data:`ORT_PRECISION_MODE`), and the
    problem in one word (SATURATES: u8s8 on a CPU whose U8S8 kernels saturate; SUBOPTIMAL:
    a 7-bit or U8 model where u8s8 would be exact; None)."""

    warning: str | None
    precision_mode: bool
    problem: str | None = None


# how to get a model made for a CPU whose U8S8 kernels saturate
REQUANTIZE = ("re-quantize on this machine (`mmfurnace compress CHECKPOINT --method int8-static` picks "
              "u8s8-reduce-range here) or pass `-o int8_format=u8s8-reduce-range` where you quantize")


def load_advice(record: dict[str, Any] | None, isa: CpuIsa | None = None, *, what: str = "model",
                precision_mode: bool | None = None) -> LoadAdvice:
    """Advice for running a model whose export.json says ``compression.int8`` is
    ``record`` on ``isa`` (default: this CPU); ``precision_mode`` True/False: the caller's
    choice instead of the advised one.

    - no record (an FP32 export, or one quantized before formats were recorded): on a
      saturating CPU precision mode is still switched on (it only touches int8 weights that
      need it), without a warning;
    - u8s8 on a saturating CPU: precision mode on (exact, slower), and a warning saying so
      and how to get the fast kernels back;
    - a 7-bit or U8 model on a CPU whose U8S8 kernels are exact: a warning that re-quantizing
      here gives full 8-bit weights / faster kernels (the model is accurate as it is).
    """
    isa = isa or cpu_isa()
    saturates = u8s8_saturates(isa)
    mode = saturates if precision_mode is None else precision_mode
    if not record or record.get("format") not in INT8_FORMATS:
        return LoadAdvice(None, mode)
    fmt = INT8_FORMATS[record["format"]]
    made_on = record.get("quantized_on", {})
    made = f"{made_on.get('arch', '?')} [{', '.join(made_on.get('flags', [])) or '?'}]"
    here = f"{isa.describe()} (U8S8 kernel: {u8s8_kernel(isa)})"
    if saturates and not fmt.exact_everywhere:
        now = (f"ONNX Runtime's precision mode ({ORT_PRECISION_MODE}) is on for this session: exact, "
               "but its U8U8 kernels are slower" if mode else
               f"precision_mode=False keeps ONNX Runtime's precision mode ({ORT_PRECISION_MODE}) off: "
               "expect saturated, wrong results")
        return LoadAdvice(
            f"{what} was quantized as u8s8 (8-bit weights) on {made}; this CPU, {here}, sums "
            "u8 x s8 products in 16 bits, which saturate with 8-bit weights and can cost many "
            f"points of accuracy. {now}. Fix: {REQUANTIZE}.", mode, SATURATES)
    if not saturates and fmt.exact_everywhere and record.get("requested", AUTO) == AUTO:
        better = "full 8-bit weights" if fmt.reduce_range else "the faster U8S8 kernels"
        return LoadAdvice(
            f"{what} was quantized as {fmt.name} for a CPU without VNNI ({made}); this CPU, {here}, "
            f"computes u8s8 exactly, so re-quantizing here (int8_format=auto) gives {better}. "
            "The model is accurate as it is.",
            mode, SUBOPTIMAL)
    return LoadAdvice(None, mode)
