"""QAT: fake quantization attaches without swapping modules, trains, and converts to an ONNX
QDQ graph with INT8 weights that onnxruntime runs close to the fake-quant model."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize

from mmfurnace.compress import FinetuneConfig, prepare_qat_
from mmfurnace.compress.finetune import finetune, training_loss
from mmfurnace.compress.measure import sqnr_db
from mmfurnace.compress.qat import (
    calibrate_,
    default_filter,
    export_mode,
    fold_weight_quantize,
    freeze_observers_,
    strip_qat_,
)
from mmfurnace.compress.quantize import export_onnx
from mmfurnace.compress.runners import OrtPredictor, TorchPredictor
from mmfurnace.train.checkpoint import load_model
from tests.compress.tinydata import INFO


def _logits(predict, batches):
    return torch.cat([predict(b) for b in batches])


@pytest.fixture
def qat_model(trained, train_loader):
    model, meta = load_model(trained)
    prepared = prepare_qat_(model, lambda m, name: default_filter(m, name, min_reduction=0))
    calibrate_(model, [b for _, b in zip(range(2), train_loader, strict=False)])
    return model, meta, prepared


def test_prepare_reaches_convs_linears_and_attention(qat_model):
    model, _, prepared = qat_model
    assert "encoders.image.stem.0" in prepared
    assert "head" in prepared
    assert any(name.endswith("self_attn") for name in prepared)  # in_proj/out_proj via parametrization
    assert not any(name.startswith("projections") for name in prepared)
    attn = model.fusion.blocks[0].self_attn
    assert torch.nn.utils.parametrize.is_parametrized(attn, "in_proj_weight")
    assert torch.nn.utils.parametrize.is_parametrized(attn.out_proj, "weight")
    assert type(model.encoders["image"].stem[0]) is not nn.Linear  # same module, just parametrized
    assert sum(isinstance(m, FakeQuantize) for m in model.modules()) > 2 * len(prepared)


def test_default_filter_skips_short_reductions(trained):
    model, _ = load_model(trained)
    prepared = prepare_qat_(model)
    assert "encoders.image.stem.0" not in prepared  # 1 channel x 5x5 = 25 < 32
    assert "encoders.image.blocks.0.0" in prepared  # 16 channels x 3x3 = 144


def test_fake_quant_model_is_close_to_fp32_and_trains(qat_model, trained, test_batches, train_loader):
    model, meta, _ = qat_model
    fp32, _ = load_model(trained)
    ref = _logits(TorchPredictor(fp32), test_batches)
    assert sqnr_db(ref, _logits(TorchPredictor(model), test_batches)) >= 20.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = finetune(model, train_loader, FinetuneConfig(epochs=1, lr=1e-3, max_steps=2),
                       loss_fn=training_loss(multilabel=False), on_step=lambda s, t: freeze_observers_(model))
    assert history[0]["steps"] == 2
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any("original" in n for n in moved)  # the float weights behind the fake quant learn


def test_conversion_to_onnx_qdq_with_int8_weights(qat_model, test_batches, tmp_path):
    model, meta, _ = qat_model
    with export_mode(model):
        out = export_onnx(model, INFO, tmp_path / "qat", config=meta.config.model, verify=False)
    path = out / "model.onnx"
    folded = fold_weight_quantize(path)
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert folded >= 10
    assert ops["DequantizeLinear"] >= folded
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= folded
    # the sidecar hash no longer matches the folded file: run it unverified
    from mmfurnace.export.runtimes.onnxruntime import OnnxRuntime

    ort = OnnxRuntime(out, threads=1, verify=False, optimized_model=False)
    got = torch.cat([torch.from_numpy(ort.run(b)) for b in test_batches])
    ref = _logits(TorchPredictor(model), test_batches)
    assert sqnr_db(ref, got) >= 20.0


def test_strip_leaves_a_plain_float_model(qat_model, test_batches):
    model, _, _ = qat_model
    strip_qat_(model)
    assert not any(isinstance(m, FakeQuantize) for m in model.modules())
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    assert _logits(TorchPredictor(model), test_batches[:1]).isfinite().all()


def test_ort_predictor_runs_a_verified_export(qat_model, tmp_path, test_batches):
    model, meta, _ = qat_model
    strip_qat_(model)
    out = export_onnx(model, INFO, tmp_path / "fp32", config=meta.config.model)
    got = OrtPredictor(out, threads=1)(test_batches[0])
    torch.testing.assert_close(got, TorchPredictor(model)(test_batches[0]), rtol=1e-3, atol=1e-3)


def test_quantize_with_qat_config_prepares_in_place(trained):
    from mmfurnace.compress import QATConfig, quantize_

    model, _ = load_model(trained)
    assert quantize_(model, QATConfig(min_reduction=0)) is model
    assert torch.nn.utils.parametrize.is_parametrized(model.head, "weight")
