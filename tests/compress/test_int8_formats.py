"""Every INT8 format on the CPU these tests run on: each stays close to FP32 (the u8s8 one
through ORT's precision mode where this CPU's U8S8 kernels saturate), the non-VNNI choice can
be forced and holds on any CPU, u8u8 is the u8s8 model with shifted weights, and a model
quantized for another CPU says so when it is loaded."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from mmfurnace import cpu
from mmfurnace.compress import Int8DynamicConfig, Int8StaticConfig, quantize_onnx
from mmfurnace.compress.int8_weights import weights_to_u8
from mmfurnace.compress.measure import sqnr_db
from mmfurnace.compress.quantize import export_onnx
from mmfurnace.compress.runners import OrtPredictor
from mmfurnace.export.int8_format import ORT_PRECISION_MODE, Int8FormatWarning
from mmfurnace.export.runtimes.registry import RUNTIMES
from mmfurnace.train.checkpoint import load_model
from tests.compress.tinydata import INFO

AVX2_ONLY = "sse4_1,avx2,fma"
VNNI = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512_vnni"


@pytest.fixture(scope="module")
def fp32_export(trained, tmp_path_factory):
    model, _ = load_model(trained)
    return export_onnx(model, INFO, tmp_path_factory.mktemp("fmt") / "fp32")


@pytest.fixture(scope="module")
def reference(fp32_export, test_batches):
    return _logits(fp32_export, test_batches)


@pytest.fixture(scope="module")
def static(fp32_export, train_loader, tmp_path_factory):
    """The tiny model quantized static (minmax) in each format, from the same calibration."""
    calibration = [b for _, b in zip(range(2), train_loader, strict=False)]
    root = tmp_path_factory.mktemp("static")
    return {fmt: quantize_onnx(fp32_export, root / fmt, Int8StaticConfig(num_batches=2, min_reduction=0,
                                                                        int8_format=fmt), calibration=calibration)
            for fmt in ("u8s8", "u8s8-reduce-range", "u8u8")}


def _logits(export_dir, batches) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8FormatWarning)  # a u8s8 model on a CPU without VNNI
        predict = OrtPredictor(export_dir, threads=1)
    return torch.cat([predict(b) for b in batches])


def _weights(export_dir) -> dict[str, np.ndarray]:
    graph = onnx.load(str(export_dir / "model.onnx")).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer
            if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) >= 2}


@pytest.mark.parametrize("fmt", ["u8s8", "u8s8-reduce-range", "u8u8"])
def test_every_format_stays_close_to_fp32_on_this_cpu(static, reference, test_batches, fmt):
    got = _logits(static[fmt], test_batches)
    assert sqnr_db(reference, got) >= 18.0
    labels = torch.cat([b.labels for b in test_batches])
    assert abs(float((got.argmax(1) == labels).float().mean() - (reference.argmax(1) == labels).float().mean())) <= 0.05
    recorded = json.loads((static[fmt] / "export.json").read_text())["compression"]["int8"]
    assert (recorded["format"], recorded["requested"]) == (fmt, fmt)


def test_formats_store_what_they_say(static):
    full, seven, unsigned = (_weights(static[f]) for f in ("u8s8", "u8s8-reduce-range", "u8u8"))
    assert full
    assert all(w.dtype == np.int8 for w in full.values())
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in full.values()) > 64  # 8-bit range used
    assert all(w.dtype == np.int8 and np.abs(w.astype(np.int16)).max() <= 64 for w in seven.values())
    assert unsigned
    assert all(w.dtype == np.uint8 for w in unsigned.values())
    # u8u8 is u8s8 shifted by 128: the same integers, the same products
    assert sorted(np.concatenate([(w.astype(np.int16) - 128).ravel() for w in unsigned.values()]).tolist()) == \
        sorted(np.concatenate([w.astype(np.int16).ravel() for w in full.values()]).tolist())


def test_u8u8_computes_what_u8s8_computes(static, test_batches):
    # both exact (u8s8 through VNNI, or through ORT's precision mode without it)
    torch.testing.assert_close(_logits(static["u8u8"], test_batches), _logits(static["u8s8"], test_batches),
                               rtol=1e-5, atol=1e-5)


def test_weights_to_u8_rewrites_dynamic_graphs_too(fp32_export, tmp_path, reference, test_batches):
    out = quantize_onnx(fp32_export, tmp_path / "dyn", Int8DynamicConfig(int8_format="u8u8"))
    graph = onnx.load(str(out / "model.onnx")).graph
    ints = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert ints
    inits = {t.name: t.data_type for t in graph.initializer}
    assert all(inits[n.input[1]] == onnx.TensorProto.UINT8 for n in ints)
    assert sqnr_db(reference, _logits(out, test_batches)) >= 25.0
    assert weights_to_u8(out / "model.onnx", tmp_path / "again.onnx") == 0  # nothing signed left


def test_the_non_vnni_choice_can_be_forced_and_holds_on_any_cpu(fp32_export, train_loader, reference,
                                                                test_batches, tmp_path, monkeypatch):
    monkeypatch.setenv(cpu.ENV_OVERRIDE, AVX2_ONLY)  # quantize as if on an AVX2-only CPU
    out = quantize_onnx(fp32_export, tmp_path / "avx2", Int8StaticConfig(num_batches=2, min_reduction=0),
                        calibration=train_loader)
    recorded = json.loads((out / "export.json").read_text())["compression"]["int8"]
    assert recorded["format"] == "u8s8-reduce-range"
    assert recorded["quantized_on"]["u8s8_kernel"] == "avx2"
    assert all(np.abs(w.astype(np.int16)).max() <= 64 for w in _weights(out).values())
    monkeypatch.delenv(cpu.ENV_OVERRIDE)
    assert sqnr_db(reference, _logits(out, test_batches)) >= 18.0  # exact on this CPU, whatever it is


def test_u8s8_model_loaded_on_a_cpu_without_vnni_warns_and_runs_exact(static, monkeypatch):
    monkeypatch.setenv(cpu.ENV_OVERRIDE, AVX2_ONLY)
    with pytest.warns(Int8FormatWarning, match="precision mode"):
        runtime = RUNTIMES["onnxruntime"](static["u8s8"], threads=1, optimized_model=False)
    assert runtime.precision_mode
    assert runtime.session.get_session_options().get_session_config_entry(ORT_PRECISION_MODE) == "1"
    assert runtime.describe()["int8_format"] == "u8s8"
    with pytest.warns(Int8FormatWarning, match="expect saturated"):
        off = RUNTIMES["onnxruntime"](static["u8s8"], threads=1, optimized_model=False, precision_mode=False)
    assert not off.precision_mode
    with pytest.raises(RuntimeError, match="does not have configuration"):  # never set
        off.session.get_session_options().get_session_config_entry(ORT_PRECISION_MODE)


def test_reduce_range_model_loaded_on_a_vnni_cpu_suggests_requantizing(fp32_export, train_loader, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv(cpu.ENV_OVERRIDE, AVX2_ONLY)
    out = quantize_onnx(fp32_export, tmp_path / "avx2", Int8StaticConfig(num_batches=1), calibration=train_loader)
    monkeypatch.setenv(cpu.ENV_OVERRIDE, VNNI)
    with pytest.warns(Int8FormatWarning, match="full 8-bit weights"):
        runtime = RUNTIMES["onnxruntime"](out, threads=1, optimized_model=False)
    assert not runtime.precision_mode


@pytest.mark.slow
def test_format_benchmark_prepares_every_format_and_evaluates_on_this_cpu(trained, tiny_data_root, tmp_path,
                                                                          capsys):
    from tests.benchmark_scripts import load_benchmark

    bench = load_benchmark("int8_formats")
    out = tmp_path / "formats"
    assert bench.main(["prepare", "--checkpoint", str(trained), "--out", str(out), "--calibration", "minmax",
                       "--data-root", str(tiny_data_root)]) == 0
    assert bench.main(["eval", str(out), "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["u8s8_kernel"] == cpu.u8s8_kernel(cpu.cpu_isa())
    rows = {(r["variant"], r["precision_mode"]): r for r in result["rows"]}
    assert len(rows) == 2 * (1 + 2 * 3)  # fp32 + static and dynamic in 3 formats, each mode off and on
    assert rows[("fp32", False)]["delta_pt"] == 0.0
    for fmt in ("u8s8-reduce-range", "u8u8"):  # exact on any CPU, with or without precision mode
        for mode in (False, True):
            assert rows[(f"static-minmax-{fmt}", mode)]["sqnr_db"] >= 18.0
    assert rows[("static-minmax-u8s8", True)]["sqnr_db"] >= 18.0  # precision mode makes u8s8 exact too
    assert "U8S8" in capsys.readouterr().out
