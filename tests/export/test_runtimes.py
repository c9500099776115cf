"""Every backend behind one interface, and the parity check against eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfurnace.errors import ConfigError, InputError, MissingDependencyError
from mmfurnace.export import (
    RUNTIMES,
    assert_parity,
    available_runtimes,
    check_parity,
    format_parity,
    parity_exit_code,
)
from tests.export.conftest import Exported, tol

CPU_BACKENDS = ["eager", "torchscript", "onnxruntime", "openvino"]
GPU_BACKENDS = ["tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt"]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def require(name: str) -> None:
    ok, why = RUNTIMES[name].available()
    if not ok:
        pytest.skip(f"{name}: {why}")


def test_registry_lists_every_backend_with_a_reason() -> None:
    status = available_runtimes()
    assert set(status) == {*CPU_BACKENDS, *GPU_BACKENDS, "compile"}
    for name, (ok, why) in status.items():
        assert isinstance(ok, bool)
        assert ok or why, f"{name} unavailable without a reason"
    with pytest.raises(ConfigError, match="known: .*onnxruntime"):
        RUNTIMES["onnx-runtime"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backend_matches_eager(backend: str, exported: Exported, odd_batch) -> None:
    require(backend)
    runtime = RUNTIMES[backend](exported.dir, threads=1)
    logits = runtime.run(odd_batch)
    reference = exported.eager(odd_batch)
    assert logits.dtype == np.float32
    assert logits.shape == (6, 10)
    np.testing.assert_allclose(logits, reference.numpy(), rtol=0, atol=tol(reference))
    info = runtime.describe()
    assert {"backend", "version", "device", "precision", "threads", "providers"} <= set(info)
    assert info["backend"] == backend
    assert info["precision"] == "fp32"


def test_parity_passes_for_every_available_backend(cross: Exported, odd_batch) -> None:
    # compile is covered by the slow test below (inductor takes tens of seconds here).
    names = [n for n in RUNTIMES.names() if n != "compile"]
    results = check_parity(cross.dir, odd_batch, runtimes=names)
    table = format_parity(results)
    assert parity_exit_code(results) == 0, table
    by_name = {r.runtime: r for r in results}
    for name in CPU_BACKENDS:
        if RUNTIMES[name].available()[0]:
            assert by_name[name].status == "pass", table
            assert by_name[name].value <= by_name[name].tolerance
    for name in GPU_BACKENDS:
        if not RUNTIMES[name].available()[0]:
            assert by_name[name].status == "skip", table
            assert by_name[name].reason, table


def test_parity_at_reduced_precision(late: Exported, odd_batch) -> None:
    results = check_parity(
        late.dir,
        odd_batch,
        runtimes=["eager", "onnxruntime", "openvino"],
        precisions=("bf16", "int8"),
    )
    table = format_parity(results)
    assert parity_exit_code(results) == 0, table
    status = {(r.runtime, r.precision): r for r in results}
    assert status[("eager", "bf16")].status == "pass", table
    assert status[("onnxruntime", "int8")].status == "pass", table
    assert status[("onnxruntime", "int8")].metric == "accuracy_delta_pts"
    assert status[("onnxruntime", "bf16")].status == "skip"  # not offered on the CPU EP


def test_parity_reports_a_backend_that_drifts(late: Exported, odd_batch, monkeypatch) -> None:
    from mmfurnace.export.runtimes.onnxruntime import OnnxRuntime

    original = OnnxRuntime._run

    def drifting(self, feed):
        return [out + 0.05 for out in original(self, feed)]

    monkeypatch.setattr(OnnxRuntime, "_run", drifting)
    results = check_parity(late.dir, odd_batch, runtimes=["eager", "onnxruntime"])
    (ort_result,) = [r for r in results if r.runtime == "onnxruntime"]
    assert ort_result.status == "fail"
    assert ort_result.value == pytest.approx(0.05, rel=1e-3)
    assert parity_exit_code(results) == 1
    with pytest.raises(InputError, match="onnxruntime/fp32: fail"):
        assert_parity(late.dir, odd_batch, runtimes=["onnxruntime"])


def test_onnxruntime_options(late: Exported, odd_batch, tmp_path) -> None:
    runtime = RUNTIMES["onnxruntime"](
        late.dir, graph_optimization="basic", threads=1, inter_op_threads=1, cache_dir=tmp_path
    )
    reference = late.eager(odd_batch)
    np.testing.assert_allclose(
        runtime.run(odd_batch), reference.numpy(), rtol=0, atol=tol(reference)
    )
    info = runtime.describe()
    assert info["threads"] == 1
    assert info["providers"] == ["CPUExecutionProvider"]
    assert (
        tmp_path / "model.fp32.ort-basic.onnx"
    ).is_file()  # SessionOptions.optimized_model_filepath
    with pytest.raises(ConfigError, match="graph_optimization"):
        RUNTIMES["onnxruntime"](late.dir, graph_optimization="max")
    with pytest.raises(ConfigError, match="does not run fp16"):
        RUNTIMES["onnxruntime"](late.dir, precision="fp16")
    with pytest.raises(ConfigError, match="precision 'fp8' is unknown"):
        RUNTIMES["eager"](late.dir, precision="fp8")


def test_openvino_hints(late: Exported, odd_batch) -> None:
    require("openvino")
    runtime = RUNTIMES["openvino"](late.dir, hint="THROUGHPUT", threads=1)
    assert runtime.describe()["hint"] == "THROUGHPUT"
    reference = late.eager(odd_batch)
    np.testing.assert_allclose(
        runtime.run(odd_batch), reference.numpy(), rtol=0, atol=tol(reference)
    )
    with pytest.raises(ConfigError, match="hint"):
        RUNTIMES["openvino"](late.dir, hint="FAST")


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_encoder_graph_through_a_runtime(backend: str, cross: Exported, odd_batch) -> None:
    runtime = RUNTIMES[backend](cross.dir, graph="encoder_text")
    outs = runtime.run_graph(
        {
            "text": odd_batch.inputs["text"],
            "text_mask": odd_batch.valid["text"],
            "text_present": odd_batch.present["text"],
        }
    )
    assert list(outs) == ["text_sequence", "text_pooled", "text_sequence_mask"]
    with torch.no_grad():
        want = cross.model.encode(
            "text", odd_batch.inputs["text"], odd_batch.valid["text"], odd_batch.present["text"]
        )
    np.testing.assert_allclose(outs["text_pooled"], want.pooled.numpy(), rtol=0, atol=1e-4)
    with pytest.raises(InputError, match="does not produce logits"):
        runtime.run(odd_batch)


def test_absent_modality_can_be_left_out(cross: Exported, odd_batch) -> None:
    # A dict without "audio": the runtime fills it as absent for every row.
    runtime = RUNTIMES["onnxruntime"](cross.dir)
    feed = {
        "image": odd_batch.inputs["image"],
        "text": odd_batch.inputs["text"],
        "text_mask": odd_batch.valid["text"],
    }
    logits = runtime.run(feed)
    present = {
        "audio": torch.zeros(6, dtype=torch.bool),
        "image": torch.ones(6, dtype=torch.bool),
        "text": torch.ones(6, dtype=torch.bool),
    }
    with torch.no_grad():
        reference = cross.model(
            {"image": odd_batch.inputs["image"], "text": odd_batch.inputs["text"]},
            present,
            {"text": odd_batch.valid["text"]},
        ).logits
    np.testing.assert_allclose(logits, reference.numpy(), rtol=0, atol=tol(reference))


def test_gpu_backends_refuse_cleanly_without_a_gpu(late: Exported) -> None:
    for name in GPU_BACKENDS:
        ok, why = RUNTIMES[name].available()
        if ok:
            continue
        assert "CUDA GPU" in why or "not installed" in why or "onnxruntime-gpu" in why
        with pytest.raises(MissingDependencyError, match=name):
            RUNTIMES[name](late.dir)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("backend", "precision", "relative"),
    [
        ("tensorrt", "fp32", 1e-4),
        ("tensorrt", "fp16", 1e-2),
        ("onnxruntime-cuda", "fp32", 1e-4),
        ("onnxruntime-tensorrt", "fp16", 1e-2),
    ],
)
def test_gpu_backend_matches_eager(
    backend: str, precision: str, relative: float, cross: Exported, odd_batch, tmp_path
) -> None:
    require(backend)
    runtime = RUNTIMES[backend](cross.dir, precision=precision, cache_dir=tmp_path)
    reference = cross.eager(odd_batch)
    np.testing.assert_allclose(
        runtime.run(odd_batch), reference.numpy(), rtol=0, atol=tol(reference, relative)
    )


@needs_gpu
@pytest.mark.gpu
def test_tensorrt_engine_is_cached_by_settings(cross: Exported, odd_batch, tmp_path) -> None:
    require("tensorrt")
    first = RUNTIMES["tensorrt"](cross.dir, cache_dir=tmp_path, batch=(1, 4, 16))
    assert first.describe()["engine_built_now"]
    again = RUNTIMES["tensorrt"](cross.dir, cache_dir=tmp_path, batch=(1, 4, 16))
    assert not again.describe()["engine_built_now"]
    assert again.engine_path == first.engine_path
    other = RUNTIMES["tensorrt"](cross.dir, cache_dir=tmp_path, batch=(1, 8, 32))
    assert other.engine_path != first.engine_path
    big = {
        k: v.repeat(4, *([1] * (v.dim() - 1))) for k, v in odd_batch.inputs.items()
    }  # batch 24 > 16
    with pytest.raises(InputError, match="built for"):
        first.run({**big, **{f"{m}_mask": v.repeat(4, 1) for m, v in odd_batch.valid.items()}})


@pytest.mark.slow
def test_compile_backend_parity(late: Exported, odd_batch) -> None:
    require("compile")
    results = check_parity(late.dir, odd_batch, runtimes=["compile"])
    assert results[0].status == "pass", format_parity(results)
