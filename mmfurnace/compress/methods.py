"""The compression methods, by name (``METHODS["int8-static"]``): each builds its variant(s)
from a :class:`~mmfurnace.compress.context.Context` and returns them unmeasured."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from mmfurnace.compress import channels
from mmfurnace.compress import distill as distill_mod
from mmfurnace.compress import prune as prune_mod
from mmfurnace.compress import qat as qat_mod
from mmfurnace.compress import sensitivity as sens_mod
from mmfurnace.compress.config import (
    ChannelConfig,
    DistillConfig,
    HalfConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    MagnitudeConfig,
    QATConfig,
    SensitivityConfig,
    config_dict,
)
from mmfurnace.compress.context import Context, Variant
from mmfurnace.compress.finetune import finetune
from mmfurnace.compress.int8_weights import weights_to_u8
from mmfurnace.compress.measure import count_macs, count_params, evaluate_predict, size_on_disk
from mmfurnace.compress.quantize import (
    DTYPES,
    export_onnx,
    quantize_,
    quantize_onnx,
    write_variant_export,
)
from mmfurnace.compress.runners import TorchPredictor
from mmfurnace.export.int8_format import INT8_FORMATS, RECORD_KEY, resolve_int8_format
from mmfurnace.models.surgery import shape_attributes
from mmfurnace.registry import Registry


class Method(NamedTuple):
    config: type
    run: Callable[[Context, Any], list[Variant]]
    defaults: dict[str, Any]
    doc: str
    family: str  # its accuracy budget: gate.BUDGETS[family]


METHODS: Registry[Method] = Registry("compression method")


def _method(name: str, config: type, doc: str, *, family: str, **defaults: Any) -> Callable[[Callable], Callable]:
    def register(run: Callable[[Context, Any], list[Variant]]) -> Callable:
        METHODS.register(name)(Method(config, run, defaults, doc, family))
        return run

    return register


# --- the methods ---------------------------------------------------------------------------------


def _half(ctx: Context, cfg: HalfConfig) -> list[Variant]:
    model = quantize_(ctx.copy_model(), cfg)
    name = {"float16": "fp16", "bfloat16": "bf16"}[cfg.dtype] + ("-autocast" if cfg.autocast else "")
    path = ctx.save_checkpoint(name, model, compression=config_dict(cfg))
    variant = ctx.torch_variant(name, model, path)
    if cfg.autocast:
        variant.predict = TorchPredictor(model, autocast=DTYPES[cfg.dtype])
    return [variant]


_method("fp16", HalfConfig, "FP16 weights and activations (eager PyTorch)", family="half", dtype="float16")(_half)
_method("bf16", HalfConfig, "BF16 weights and activations (eager PyTorch)", family="half", dtype="bfloat16")(_half)


@_method("int8-dynamic", Int8DynamicConfig, "INT8 weights, per-batch activation ranges (onnxruntime or torch.ao)",
         family="int8")
def _int8_dynamic(ctx: Context, cfg: Int8DynamicConfig) -> list[Variant]:
    if cfg.runtime == "torch":
        model = quantize_(ctx.copy_model(), cfg)
        path = ctx.out_dir / "int8-dynamic-torch"
        path.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path / "model.pt")  # packed INT8 params: not safetensors-able
        return [Variant("int8-dynamic-torch", "torch", TorchPredictor(model, fastpath=False), count_params(ctx.model),
                        count_macs(ctx.model, ctx.example), path, size_on_disk(path))]
    out = quantize_onnx(ctx.fp32_export(), ctx.out_dir / "int8-dynamic", cfg)
    return [ctx.ort_variant("int8-dynamic", out, params=count_params(ctx.model), macs=count_macs(ctx.model, ctx.example))]


@_method("int8-static", Int8StaticConfig, "INT8 QDQ, calibrated on real training batches (onnxruntime)",
         family="int8")
def _int8_static(ctx: Context, cfg: Int8StaticConfig) -> list[Variant]:
    name = f"int8-static-{cfg.calibration}"
    out = quantize_onnx(ctx.fp32_export(), ctx.out_dir / name, cfg, calibration=ctx.calibration(cfg.num_batches))
    return [ctx.ort_variant(name, out, params=count_params(ctx.model), macs=count_macs(ctx.model, ctx.example))]


@_method("qat", QATConfig, "fake-quant fine-tuning, converted to INT8 QDQ for onnxruntime", family="int8")
def _qat(ctx: Context, cfg: QATConfig) -> list[Variant]:
    fmt_record = resolve_int8_format(cfg.int8_format)
    fmt = INT8_FORMATS[fmt_record["format"]]
    model = ctx.copy_model()
    prepared = qat_mod.prepare_qat_(
        model, lambda m, n: qat_mod.default_filter(m, n, min_reduction=cfg.min_reduction),
        reduce_range=fmt.reduce_range)
    qat_mod.calibrate_(model, ctx.calibration(cfg.num_batches))
    freeze_at = cfg.freeze_observers_after

    def on_step(step: int, total: int) -> None:
        if step == max(1, int(total * freeze_at)):
            qat_mod.freeze_observers_(model)

    if freeze_at == 0:
        qat_mod.freeze_observers_(model)
    history = finetune(model, ctx.train_loader, cfg.finetune, loss_fn=ctx.loss(), on_step=on_step)
    ctx.details.update(qat_layers=prepared, history=history)
    staging = ctx.out_dir / "qat-fakequant"
    with qat_mod.export_mode(model):
        # verify=False: the QDQ graph is INT8 and differs from the fake-quant eager model by
        # rounding; the measured accuracy below is the check that matters.
        export_onnx(model, ctx.info, staging, config=ctx.meta.config.model, verify=False,
                    source=str(ctx.meta.path))
    qat_mod.fold_weight_quantize(staging / "model.onnx")
    if fmt.weights == "u8":
        weights_to_u8(staging / "model.onnx", staging / "model.onnx")
    out = write_variant_export(staging, staging / "model.onnx", ctx.out_dir / "qat-int8",
                               compression={**config_dict(cfg), RECORD_KEY: fmt_record})
    shutil.rmtree(staging)
    fq = TorchPredictor(model)
    ctx.details["fake_quant_accuracy"] = evaluate_predict(fq, ctx.eval_batches, multilabel=ctx.multilabel)
    return [ctx.ort_variant("qat-int8", out, params=count_params(ctx.model), macs=count_macs(ctx.model, ctx.example))]


@_method("sensitivity", SensitivityConfig, "per-layer INT8 sensitivity, then mixed INT8/FP32 within a budget",
         family="int8")
def _sensitivity(ctx: Context, cfg: SensitivityConfig) -> list[Variant]:
    result = sens_mod.analyse(
        ctx.fp32_export(), ctx.out_dir / "sensitivity", cfg, calibration=ctx.calibration(cfg.num_batches),
        validation=ctx.valid_batches, multilabel=ctx.multilabel, threads=ctx.ort_threads,
    )
    files = sens_mod.write_outputs(result, ctx.out_dir / "sensitivity", title="INT8 sensitivity per layer")
    ctx.details.update(sensitivity=result.rows, kept_fp32=result.kept_fp32, sensitivity_files=files,
                       mixed_steps=result.steps)
    return [ctx.ort_variant("int8-mixed", result.mixed_dir, params=count_params(ctx.model),
                            macs=count_macs(ctx.model, ctx.example), kept_fp32=len(result.kept_fp32))]


@_method("prune-unstructured", MagnitudeConfig, "L1 magnitude pruning (global or per layer) + fine-tune",
         family="pruning")
def _prune_unstructured(ctx: Context, cfg: MagnitudeConfig) -> list[Variant]:
    model = ctx.copy_model()
    targets = prune_mod.magnitude_prune_(model, cfg)
    ctx.details["history"] = finetune(model, ctx.train_loader, cfg.finetune, loss_fn=ctx.loss(),
                                      select_on=ctx.valid_accuracy)
    prune_mod.make_permanent_(model)
    ctx.details["sparsity"] = prune_mod.weight_sparsity(targets)
    name = f"pruned-l1-{int(round(100 * cfg.sparsity))}"
    path = ctx.save_checkpoint(name, model, compression=config_dict(cfg))
    return _torch_and_ort(ctx, name, model, path, nonzero=True)


@_method("prune-channel", ChannelConfig, "structured channel/head pruning, fusion-aware, + fine-tune",
         family="pruning")
def _prune_channel(ctx: Context, cfg: ChannelConfig) -> list[Variant]:
    model = ctx.copy_model()
    steps, widths, history = cfg.iterative_steps, {}, []
    for i in range(1, steps + 1):
        # cumulative target after step i: sparsity * i / steps of the original width
        before, after = 1 - cfg.sparsity * (i - 1) / steps, 1 - cfg.sparsity * i / steps
        summary = channels.channel_prune_(model, cfg, example=ctx.example, ratio=1 - after / before)
        for part, (w0, w1) in summary["widths"].items():
            widths[part] = (widths.get(part, (w0, w1))[0], w1)
        history += _recover(ctx, model, cfg)
    ctx.details.update(widths=widths, history=history)
    name = f"pruned-channel-{int(round(100 * cfg.sparsity))}"
    compression = {**config_dict(cfg), "shape_attributes": shape_attributes(model)}
    path = ctx.save_checkpoint(name, model, compression=compression)
    return _torch_and_ort(ctx, name, model, path, pickled=True)


def _recover(ctx: Context, model: nn.Module, cfg: ChannelConfig) -> list[dict[str, Any]]:
    """The fine-tune after a pruning step: on the labels, or against the unpruned parent; the
    pruned model keeps its best epoch by validation accuracy."""
    if not cfg.distill:
        return finetune(model, ctx.train_loader, cfg.finetune, loss_fn=ctx.loss(), select_on=ctx.valid_accuracy)
    teacher = ctx.copy_model()
    for p in teacher.parameters():
        p.requires_grad_(False)
    criterion = distill_mod.DistillLoss(teacher, model, DistillConfig(), multilabel=ctx.multilabel)
    return finetune(model, ctx.train_loader, cfg.finetune, loss_fn=criterion,
                    params=[*model.parameters(), *criterion.proj.parameters()], select_on=ctx.valid_accuracy)


@_method("distill", DistillConfig, "teacher -> smaller student on soft logits + features", family="student")
def _distill(ctx: Context, cfg: DistillConfig) -> list[Variant]:
    from mmfurnace.models import build_model

    student_cfg = distill_mod.student_config(ctx.meta.config.model, cfg)
    torch.manual_seed(ctx.meta.config.train.seed)
    student = build_model(student_cfg, ctx.info, modalities=ctx.modalities)
    history = distill_mod.distill(ctx.copy_model(), student, ctx.train_loader, cfg, multilabel=ctx.multilabel,
                                  select_on=ctx.valid_accuracy)
    ctx.details.update(history=history, student=student_cfg.model_dump(mode="json"))
    run_cfg = ctx.meta.config.model_copy(update={"model": student_cfg})
    path = ctx.save_checkpoint("student", student, config=run_cfg, compression=config_dict(cfg))
    return _torch_and_ort(ctx, "student", student, path, model_config=student_cfg)


def _torch_and_ort(ctx: Context, name: str, model: nn.Module, path: Path, *, nonzero: bool = False,
                   pickled: bool = False, model_config: Any | None = None) -> list[Variant]:
    """A torch model measured on both runtimes (its ONNX export under out_dir/<name>-onnx)."""
    torch_v = ctx.torch_variant(name, model, path, nonzero=nonzero)
    cfg = None if pickled else (model_config or ctx.meta.config.model)
    export = export_onnx(model, ctx.info, ctx.out_dir / f"{name}-onnx", config=cfg, source=str(path))
    ort_v = ctx.ort_variant(name, export, params=torch_v.params, macs=torch_v.macs)
    return [torch_v, ort_v]
