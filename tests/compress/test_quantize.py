"""Quantization on a trained tiny model: outputs stay close to FP32 (SQNR of the logits on
real test inputs) and the artefacts are what they claim to be (INT8 weights, QDQ graph)."""

from __future__ import annotations

import collections
import json

import onnx
import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from mmfurnace.compress import (
    HalfConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    quantize_,
    quantize_onnx,
)
from mmfurnace.compress.measure import sqnr_db
from mmfurnace.compress.quantize import export_onnx
from mmfurnace.compress.runners import OrtPredictor, TorchPredictor
from mmfurnace.cpu import cpu_isa
from mmfurnace.errors import ConfigError
from mmfurnace.export.int8_format import choose_int8_format
from mmfurnace.train.checkpoint import load_model
from tests.compress.tinydata import INFO


def _logits(predict, batches):
    return torch.cat([predict(b) for b in batches])


@pytest.fixture(scope="module")
def fp32(trained):
    model, _ = load_model(trained)
    return model


@pytest.fixture(scope="module")
def fp32_export(fp32, tmp_path_factory):
    return export_onnx(fp32, INFO, tmp_path_factory.mktemp("export") / "fp32")


@pytest.fixture(scope="module")
def ort_reference(fp32_export, test_batches):
    return _logits(OrtPredictor(fp32_export, threads=1), test_batches)


@pytest.mark.parametrize(("dtype", "min_db"), [("float16", 40.0), ("bfloat16", 25.0)])
def test_half_precision_stays_close(fp32, test_batches, dtype, min_db):
    ref = _logits(TorchPredictor(fp32), test_batches)
    import copy

    half = quantize_(copy.deepcopy(fp32), HalfConfig(dtype=dtype))
    assert next(half.parameters()).dtype == getattr(torch, dtype)
    got = _logits(TorchPredictor(half, dtype=getattr(torch, dtype)), test_batches)
    assert sqnr_db(ref, got) >= min_db


def test_torch_dynamic_int8_swaps_linears_and_stays_close(fp32, test_batches):
    import copy

    ref = _logits(TorchPredictor(fp32), test_batches)
    q = quantize_(copy.deepcopy(fp32), Int8DynamicConfig(runtime="torch"))
    float_left = [n for n, m in q.named_modules() if type(m) is torch.nn.Linear]
    assert all(n.startswith("projections.") for n in float_left)  # off the logits path
    assert sum(isinstance(m, DynamicLinear) for m in q.modules()) >= 6
    got = _logits(TorchPredictor(q, fastpath=False), test_batches)
    assert sqnr_db(ref, got) >= 20.0


def test_filter_fn_limits_what_is_quantized(fp32):
    import copy

    q = quantize_(copy.deepcopy(fp32), Int8DynamicConfig(runtime="torch"), filter_fn=lambda m, name: name == "head")
    assert isinstance(q.head, DynamicLinear)
    assert type(q.encoders["image"].proj) is torch.nn.Linear


def test_static_int8_needs_the_onnx_path(fp32):
    with pytest.raises(ConfigError, match="quantize_onnx"):
        quantize_(fp32, Int8StaticConfig())


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "entropy"])
def test_static_int8_on_real_calibration_batches(fp32_export, ort_reference, test_batches, train_loader, tmp_path, calibration):
    # the format chosen for the CPU this runs on (u8s8 with VNNI/AMX, 7-bit weights without)
    config = Int8StaticConfig(calibration=calibration, num_batches=2, min_reduction=0)
    out = quantize_onnx(fp32_export, tmp_path / calibration, config, calibration=train_loader)
    recorded = json.loads((out / "export.json").read_text())["compression"]["int8"]
    assert recorded["format"] == choose_int8_format(cpu_isa())[0].name
    assert recorded["requested"] == "auto"
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] > 0
    assert ops["DequantizeLinear"] > 0
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) >= 10  # every conv and weight matmul: stored as INT8
    got = _logits(OrtPredictor(out, threads=1), test_batches)
    assert sqnr_db(ort_reference, got) >= 18.0
    ref_acc = (ort_reference.argmax(1) == torch.cat([b.labels for b in test_batches])).float().mean()
    acc = (got.argmax(1) == torch.cat([b.labels for b in test_batches])).float().mean()
    assert abs(float(acc - ref_acc)) <= 0.05


def test_short_reductions_stay_float(fp32_export, train_loader, tmp_path):
    from mmfurnace.compress.quantize import preprocessed, quantizable_nodes

    nodes = {n["name"]: n for n in quantizable_nodes(preprocessed(fp32_export))}
    stem = next(n for n in nodes.values() if "stem" in n["name"])
    assert stem["reduction"] == 1 * 5 * 5  # 1-channel image, 5x5 kernel
    out = quantize_onnx(fp32_export, tmp_path / "q", Int8StaticConfig(num_batches=1, min_reduction=32),
                        calibration=train_loader)
    graph = onnx.load(str(out / "model.onnx")).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    assert weights[stem["weight"]] == onnx.TensorProto.FLOAT  # left alone
    quantized = [n for n in nodes.values() if n["reduction"] >= 32 and n["op_type"] == "Conv"]
    assert quantized
    assert all(weights.get(n["weight"]) != onnx.TensorProto.FLOAT for n in quantized)


def test_dynamic_int8_onnx(fp32_export, ort_reference, test_batches, tmp_path):
    out = quantize_onnx(fp32_export, tmp_path / "dyn", Int8DynamicConfig())
    recorded = json.loads((out / "export.json").read_text())["compression"]["int8"]
    assert recorded["format"] == choose_int8_format(cpu_isa())[0].name
    ops = collections.Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert ops["MatMulInteger"] > 0
    assert ops["DynamicQuantizeLinear"] > 0
    assert sqnr_db(ort_reference, _logits(OrtPredictor(out, threads=1), test_batches)) >= 25.0


def test_static_without_calibration_data_is_refused(fp32_export, tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        quantize_onnx(fp32_export, tmp_path / "x", Int8StaticConfig())


def test_calibration_batches_are_made_uniform_without_changing_outputs(fp32, test_batches):
    from mmfurnace.compress.measure import split_samples
    from mmfurnace.compress.quantize import uniform_batches

    batches = split_samples(test_batches[0], 6)  # each trimmed to its own lengths
    lengths = {tuple(b.valid[m].shape[1] if m in b.valid else 0 for m in ("audio", "text")) for b in batches}
    assert len(lengths) > 1  # real requests differ in length (or lack a modality)
    even = uniform_batches(batches)
    assert len({tuple(b.valid[m].shape[1] for m in ("audio", "text")) for b in even}) == 1
    assert len({len(b) for b in even}) == 1
    for before, after in zip(batches, even, strict=True):
        torch.testing.assert_close(TorchPredictor(fp32)(after), TorchPredictor(fp32)(before), rtol=1e-4, atol=1e-5)


def test_preprocessing_leaves_nothing_in_the_working_directory(fp32_export, tmp_path, monkeypatch):
    # onnxruntime's symbolic shape inference dumps files into the cwd when it gives up
    from mmfurnace.compress.quantize import preprocessed

    cached = preprocessed(fp32_export)
    cached.unlink()  # force a fresh run
    monkeypatch.chdir(tmp_path)
    assert preprocessed(fp32_export).is_file()
    assert list(tmp_path.iterdir()) == []


class _ConvChain(torch.nn.Module):
    """A 1-channel stem (reduction 9), then a depthwise conv (9) and a pointwise one (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = torch.nn.Conv2d(8, 16, 1)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = torch.nn.functional.relu6(self.depthwise(x))
        return self.pointwise(x).mean((2, 3))


def test_only_short_first_layers_stay_float(tmp_path):
    from mmfurnace.compress.quantize import kept_float, quantizable_nodes

    path = tmp_path / "chain.onnx"
    torch.onnx.export(_ConvChain().eval(), (torch.randn(2, 1, 8, 8),), str(path), dynamo=False)
    nodes = quantizable_nodes(path)
    assert [n["reduction"] for n in nodes] == [9, 9, 8]
    assert [n["first"] for n in nodes] == [True, False, False]
    assert [kept_float(n, 32) for n in nodes] == [True, False, False]
    assert not any(kept_float(n, 0) for n in nodes)


def test_chain_stays_int8(tmp_path):
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    from mmfurnace.compress.quantize import quantize_static_file

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [{"x": np.random.default_rng(i).standard_normal((2, 1, 8, 8)).astype(np.float32)}
                            for i in range(2)]

        def get_next(self):
            return self.batches.pop() if self.batches else None

    src, dst = tmp_path / "chain.onnx", tmp_path / "q.onnx"
    torch.onnx.export(_ConvChain().eval(), (torch.randn(2, 1, 8, 8),), str(src), input_names=["x"], dynamo=False)
    quantize_static_file(src, dst, Reader(), Int8StaticConfig())
    graph = onnx.load(str(dst)).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert [weights.get(c.input[1], "dequantized") for c in convs] == [onnx.TensorProto.FLOAT, "dequantized",
                                                                      "dequantized"]
    # ReLU6 after an INT8 conv folds into its output range: no float Clip reads dequantized data
    producer = {o: n for n in graph.node for o in n.output}
    clips = [n for n in graph.node if n.op_type == "Clip"]
    assert all(producer[c.input[0]].op_type != "DequantizeLinear" for c in clips)
