"""Compression method configs: frozen dataclasses validated in ``__post_init__``.

A compressed variant is reproduced from its config (``asdict(config)`` is written next to it),
so every knob a method has lives here and nowhere else. A bad value raises ConfigError naming
the field, its value and what is allowed.

Which library does the work (see the module docstrings for why):
    HalfConfig           torch: ``model.to(dtype)`` or ``torch.autocast``
    Int8DynamicConfig    onnxruntime.quantization.quantize_dynamic (or torch.ao quantize_dynamic)
    Int8StaticConfig     onnxruntime.quantization.quantize_static, QDQ, calibrated on real batches
    QATConfig            torch.ao.quantization FakeQuantize modules -> ONNX QDQ -> onnxruntime
    SensitivityConfig    onnxruntime static quantization with ``nodes_to_exclude``
    MagnitudeConfig      torch.nn.utils.prune (global or per-layer L1), made permanent
    ChannelConfig        Torch-Pruning's dependency graph + our fusion-aware bookkeeping
    DistillConfig        our loop: KL on softened logits + MSE on projected features
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mmfurnace.errors import ConfigError
from mmfurnace.export.int8_format import AUTO, check_format_name


def _choice(cls: str, name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ConfigError(f"{cls}.{name}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def _range(
    cls: str, name: str, value: float, *, lo: float | None = None, hi: float | None = None,
    lo_open: bool = False, hi_open: bool = False,
) -> None:
    bad = (
        (lo is not None and (value < lo or (lo_open and value == lo)))
        or (hi is not None and (value > hi or (hi_open and value == hi)))
    )
    if bad or value != value:  # NaN fails every comparison
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{cls}.{name}: {value!r} is out of range, must be in {span}")


def _positive_int(cls: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(f"{cls}.{name}: {value!r} must be an integer >= {0 if allow_zero else 1}")


@dataclass(frozen=True)
class FinetuneConfig:
    """A short fine-tune after a lossy step (pruning, QAT, distillation).

    epochs: passes over the training split (0 = no fine-tune); max_steps caps the optimiser
    steps in total (None = no cap); lr: AdamW learning rate (no warmup, cosine to 0).
    """

    epochs: int = 1
    lr: float = 5e-4
    max_steps: int | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive_int("FinetuneConfig", "epochs", self.epochs, allow_zero=True)
        _range("FinetuneConfig", "lr", self.lr, lo=0.0, lo_open=True)
        _range("FinetuneConfig", "weight_decay", self.weight_decay, lo=0.0)
        if self.max_steps is not None:
            _positive_int("FinetuneConfig", "max_steps", self.max_steps)


@dataclass(frozen=True)
class HalfConfig:
    """FP16 / BF16. ``autocast=False`` casts the weights (half the size on disk);
    ``autocast=True`` keeps FP32 weights and runs matmuls/convs in ``dtype`` under autocast."""

    dtype: str = "float16"
    autocast: bool = False

    def __post_init__(self) -> None:
        _choice("HalfConfig", "dtype", self.dtype, ("float16", "bfloat16"))


@dataclass(frozen=True)
class Int8DynamicConfig:
    """INT8 weights, activations quantized per batch at run time (no calibration).

    runtime "onnxruntime" quantizes the exported ONNX graph (MatMul/Gemm/attention; Conv with
    ``op_types`` including "Conv"); "torch" swaps nn.Linear for torch.ao dynamic quantized
    Linear (attention in_proj stays FP32: nn.MultiheadAttention reads the raw parameter).
    int8_format (onnxruntime): "auto" picks the format exact on this CPU (u8s8 with VNNI,
    u8s8-reduce-range without); "u8s8", "u8s8-reduce-range" or "u8u8" force one
    (mmfurnace.export.int8_format).
    """

    runtime: str = "onnxruntime"
    per_channel: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Attention")
    int8_format: str = AUTO

    def __post_init__(self) -> None:
        _choice("Int8DynamicConfig", "runtime", self.runtime, ("onnxruntime", "torch"))
        check_format_name(self.int8_format, where="Int8DynamicConfig.int8_format")
        object.__setattr__(self, "op_types", tuple(self.op_types))


CALIBRATIONS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Int8StaticConfig:
    """INT8 weights and activations with ranges calibrated on ``num_batches`` real training
    batches (QDQ format; U8 activations, S8 weights, per-channel weights by default).

    calibration: "minmax" | "percentile" (keeps ``percentile`` % of values) | "entropy"
    (KL-minimising threshold). ``exclude`` lists ONNX node names kept in FP32 (what the
    sensitivity analysis fills in). ``op_types`` None = Conv, MatMul and Gemm.
    ``min_reduction``: a first layer (none before it on the way from the model's inputs) whose
    dot products are shorter than this (in_channels x kernel size for a conv, in_features for
    a matmul) stays FP32 — e.g. a 5x5 conv on a 1-channel image (25): ORT's INT8 conv is
    several times slower there. Short layers deeper in (depthwise convs) are quantized with
    their neighbours. ``op_types`` None also quantizes Relu/Clip/LeakyRelu with their producer.
    ``int8_format``: "auto" (u8s8 where this CPU's U8S8 kernels are exact, else
    u8s8-reduce-range) or one of "u8s8", "u8s8-reduce-range", "u8u8".
    """

    calibration: str = "minmax"
    num_batches: int = 8
    percentile: float = 99.999
    per_channel: bool = True
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    min_reduction: int = 32
    int8_format: str = AUTO

    def __post_init__(self) -> None:
        _choice("Int8StaticConfig", "calibration", self.calibration, CALIBRATIONS)
        check_format_name(self.int8_format, where="Int8StaticConfig.int8_format")
        _positive_int("Int8StaticConfig", "num_batches", self.num_batches)
        _positive_int("Int8StaticConfig", "min_reduction", self.min_reduction, allow_zero=True)
        _range("Int8StaticConfig", "percentile", self.percentile, lo=50.0, hi=100.0)
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training: fake-quant (per-channel S8 weights, U8 activations) on the
    inputs and weights of every Conv/Linear, fine-tuned from the FP32 checkpoint, then
    converted by exporting the fake-quant graph as ONNX QDQ for onnxruntime.

    ``freeze_observers_after``: fraction of the fine-tune after which the activation ranges
    stop moving (weights keep training against fixed ranges, as torch.ao recommends).
    ``int8_format`` as Int8StaticConfig's: u8s8-reduce-range trains against 7-bit weights.
    """

    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=2, lr=2e-4))
    freeze_observers_after: float = 0.5
    num_batches: int = 8  # batches that initialise the ranges before training starts
    min_reduction: int = 32  # as Int8StaticConfig.min_reduction: shorter layers stay float
    int8_format: str = AUTO

    def __post_init__(self) -> None:
        check_format_name(self.int8_format, where="QATConfig.int8_format")
        _range("QATConfig", "freeze_observers_after", self.freeze_observers_after, lo=0.0, hi=1.0)
        _positive_int("QATConfig", "num_batches", self.num_batches)
        _positive_int("QATConfig", "min_reduction", self.min_reduction, allow_zero=True)
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneConfig(**self.finetune))


@dataclass(frozen=True)
class SensitivityConfig:
    """Per-layer (or per-block) sensitivity to INT8 static quantization, then a mixed-precision
    model that keeps the most sensitive layers in FP32 until the validation drop is within
    ``budget`` accuracy points.

    granularity "layer": one quantizable ONNX node at a time; "block": nodes grouped by their
    module prefix (an encoder block, the fusion, the head).
    """

    budget: float = 0.5
    granularity: str = "layer"
    calibration: str = "minmax"
    num_batches: int = 8
    max_layers: int | None = None  # cap on layers analysed (largest by MACs first); None = all
    int8_format: str = AUTO  # as Int8StaticConfig.int8_format

    def __post_init__(self) -> None:
        check_format_name(self.int8_format, where="SensitivityConfig.int8_format")
        _range("SensitivityConfig", "budget", self.budget, lo=0.0)
        _choice("SensitivityConfig", "granularity", self.granularity, ("layer", "block"))
        _choice("SensitivityConfig", "calibration", self.calibration, CALIBRATIONS)
        _positive_int("SensitivityConfig", "num_batches", self.num_batches)
        if self.max_layers is not None:
            _positive_int("SensitivityConfig", "max_layers", self.max_layers)


@dataclass(frozen=True)
class MagnitudeConfig:
    """Unstructured magnitude (L1) pruning of Conv/Linear weights to ``sparsity``.

    scope "global": one threshold across all layers; "layer": each layer pruned to
    ``sparsity``. Masks are made permanent (zeros written into the weights).
    """

    sparsity: float = 0.5
    scope: str = "global"
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=2, lr=5e-4))

    def __post_init__(self) -> None:
        _range("MagnitudeConfig", "sparsity", self.sparsity, lo=0.0, hi=1.0, hi_open=True)
        _choice("MagnitudeConfig", "scope", self.scope, ("global", "layer"))
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneConfig(**self.finetune))


@dataclass(frozen=True)
class ChannelConfig:
    """Structured pruning: remove ``sparsity`` of the channels (conv filters, hidden units,
    embedding width, attention head width) of every encoder and the fusion, keeping each
    encoder's output width in step with the fusion's input projection.

    iterative_steps: prune in this many equal steps, fine-tuning after each (the final
    fine-tune uses ``finetune``; intermediate ones use ``finetune`` with its epochs too).
    importance: "l2" | "l1" (group magnitude) | "random" (a baseline).
    round_to: keep widths multiples of this (kernels like multiples of 8); None = exact.
    ignore: module names (prefixes) left untouched.
    distill: fine-tune against the unpruned parent as teacher (KL on softened logits + MSE
    on projected features, DistillConfig's defaults) rather than on the labels alone.
    finetune: lr 3e-3 by default, above the training recipe's 2e-3: half the channels
    gone is a large change to recover from. On the demo model (3 rounds x 10 epochs against
    the parent, two teachers) 1e-3 lost 3.35 and 3.35 points, 2e-3 0.37 and 1.48, 3e-3 0.37
    and 0.74.
    """

    sparsity: float = 0.5
    iterative_steps: int = 1
    importance: str = "l2"
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    distill: bool = False
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=6, lr=3e-3))

    def __post_init__(self) -> None:
        _range("ChannelConfig", "sparsity", self.sparsity, lo=0.0, hi=1.0, hi_open=True)
        _positive_int("ChannelConfig", "iterative_steps", self.iterative_steps)
        _choice("ChannelConfig", "importance", self.importance, ("l2", "l1", "random"))
        if self.round_to is not None:
            _positive_int("ChannelConfig", "round_to", self.round_to)
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneConfig(**self.finetune))


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from the checkpoint (teacher) into a smaller student.

    student: a model section (dict, as in the run config) laid over the teacher's for the
    student. None: derive it from the teacher — every width (encoder dims, hidden, tensor and
    projection dims) scaled by ``width``, fusion replaced by ``fusion`` (None keeps the
    teacher's; the default "late" drops the cross-modal transformer, usually the costliest
    part), encoder depth set to ``layers`` (None keeps it). Loss:
    ``(1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T)
    + feature_weight * mean MSE(proj(student feature), teacher feature)`` over each modality's
    pooled embedding and the fused vector (learned linear projections where widths differ;
    the fused term is skipped when the student's fusion is "late", whose fused vector is
    already logits) + ``unimodal_weight`` * mean task loss of each per-modality head, for
    students whose fusion has them ("late"), so every branch learns, not only the easiest.
    """

    student: dict[str, Any] | None = None
    width: float = 0.5
    fusion: str | None = "late"
    layers: int | None = None
    temperature: float = 4.0
    alpha: float = 0.7
    feature_weight: float = 1.0
    unimodal_weight: float = 1.0
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=10, lr=3e-3))

    def __post_init__(self) -> None:
        _range("DistillConfig", "width", self.width, lo=0.0, hi=1.0, lo_open=True)
        _range("DistillConfig", "temperature", self.temperature, lo=0.0, lo_open=True)
        _range("DistillConfig", "alpha", self.alpha, lo=0.0, hi=1.0)
        _range("DistillConfig", "feature_weight", self.feature_weight, lo=0.0)
        _range("DistillConfig", "unimodal_weight", self.unimodal_weight, lo=0.0)
        if self.layers is not None:
            _positive_int("DistillConfig", "layers", self.layers)
        if self.fusion is not None:
            from mmfurnace.models.registry import FUSIONS

            try:
                FUSIONS[self.fusion]
            except ConfigError as err:
                raise ConfigError(f"DistillConfig.fusion: {err}") from None
        if self.student is not None and not isinstance(self.student, dict):
            raise ConfigError(f"DistillConfig.student: expected a model section (dict), got {type(self.student).__name__}")
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneConfig(**self.finetune))


def config_dict(config: object) -> dict[str, Any]:
    """A config as plain JSON-able values (what is written next to a variant)."""
    return {"type": type(config).__name__, **asdict(config)}  # type: ignore[call-overload]


def build_config(cls: type, options: dict[str, Any], *, method: str) -> Any:
    """``cls(**options)``, with an unknown option reported as ConfigError listing the known ones.

    ``finetune_epochs`` / ``lr`` / ``max_steps`` are accepted as shortcuts for the nested
    ``finetune`` fields on configs that have one.
    """
    known = {f.name for f in fields(cls)}
    options = dict(options)
    if "finetune" in known:
        short = {k: options.pop(k) for k in ("finetune_epochs", "lr", "max_steps") if k in options}
        if short:
            base = options.pop("finetune", None)
            base = asdict(base) if isinstance(base, FinetuneConfig) else dict(base or {})
            if not base:
                base = asdict(next(f for f in fields(cls) if f.name == "finetune").default_factory())  # type: ignore[misc]
            if "finetune_epochs" in short:
                base["epochs"] = short.pop("finetune_epochs")
            base.update(short)
            options["finetune"] = base
    if "runtime" in known and "backend" in options:  # the option's old name, still read
        options.setdefault("runtime", options.pop("backend"))
    unknown = sorted(set(options) - known)
    if unknown:
        extra = " (and finetune_epochs, lr, max_steps)" if "finetune" in known else ""
        raise ConfigError(
            f"method {method!r}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}{extra}"
        )
    try:
        return cls(**options)
    except TypeError as err:  # e.g. a nested dict with a bad key
        raise ConfigError(f"method {method!r}: {err}") from None
