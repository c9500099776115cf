"""The OpenVINO runtime: static-shape copies for recurring input shapes (compiled in the
background, the same outputs as the dynamic graph, bounded in number), FP32 that stays FP32
whatever the plugin's default, and its warning for u8s8 models on CPUs whose INT8 kernels
saturate."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mmfurnace import cpu
from mmfurnace.errors import ConfigError
from mmfurnace.export import RUNTIMES, make_example_batch
from mmfurnace.export.int8_format import Int8FormatWarning, resolve_int8_format
from mmfurnace.export.spec import load_spec, write_spec
from tests.export.conftest import Exported, tol

pytest.importorskip("openvino")


def _batch(info, size: int, audio: int):
    return make_example_batch(info, size, lengths={"audio": audio, "text": 11}, seed=size + audio)


def test_recurring_shapes_get_a_static_copy_with_the_same_outputs(exported: Exported) -> None:
    # late fusion: OpenVINO's snippets compiler segfaulted on its static-shape head
    dynamic = RUNTIMES["openvino"](exported.dir, threads=1, static_shapes=0)
    runtime = RUNTIMES["openvino"](exported.dir, threads=1, static_shapes=2, specialize_after=2)
    batch = _batch(exported.info, 4, 30)
    want = dynamic.run(batch)
    atol = tol(exported.eager(batch))
    np.testing.assert_allclose(runtime.run(batch), want, rtol=0, atol=atol)  # 1st: dynamic
    runtime.run(batch)  # 2nd sighting: compile starts in the background
    assert runtime.wait_for_static() == 1
    got = runtime.run(batch)  # from the static copy now
    assert runtime.describe()["static_shapes"] == 1
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    np.testing.assert_allclose(got, exported.eager(batch).numpy(), rtol=0, atol=atol)
    assert dynamic.describe()["static_shapes"] == 0


def test_static_copies_are_bounded_and_one_off_shapes_stay_dynamic(cross: Exported) -> None:
    runtime = RUNTIMES["openvino"](cross.dir, threads=1, static_shapes=2, specialize_after=2)
    for audio in range(40, 46):  # each seen once: never compiled
        out = runtime.run(_batch(cross.info, 2, audio))
        assert out.shape == (2, cross.info.num_classes)
    assert runtime.wait_for_static() == 0
    batches = [_batch(cross.info, 2, audio) for audio in (20, 21, 22)]
    for _ in range(3):  # three recurring shapes, room for two: the first two get them
        for batch in batches:
            runtime.run(batch)
        runtime.wait_for_static()
    assert runtime.describe()["static_shapes"] == 2
    assert runtime.wait_for_static() == 2  # the third was never compiled: no compile churn
    np.testing.assert_allclose(runtime.run(batches[2]), cross.eager(batches[2]).numpy(), rtol=0,
                               atol=tol(cross.eager(batches[2])))


def test_bad_specialisation_options(late: Exported) -> None:
    with pytest.raises(ConfigError, match="static_shapes"):
        RUNTIMES["openvino"](late.dir, static_shapes=-1)
    with pytest.raises(ConfigError, match="specialize_after"):
        RUNTIMES["openvino"](late.dir, specialize_after=0)


def test_fp32_is_asked_for_not_left_to_the_plugin(late: Exported) -> None:
    # the CPU plugin's own default is bf16 on AVX512-BF16/AMX CPUs
    assert RUNTIMES["openvino"](late.dir, threads=1).describe()["inference_precision"] == "f32"


def _labelled_u8s8(late: Exported, tmp_path, config_type: str):
    import shutil

    copy = shutil.copytree(late.dir, tmp_path / config_type)
    raw = load_spec(copy).raw
    raw["compression"] = {"type": config_type, "int8": resolve_int8_format(
        "u8s8", cpu.CpuIsa("x86_64", frozenset({"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                                                 "avx512_vnni"}), "test"))}
    write_spec(copy, raw)
    return copy


def test_u8s8_model_on_a_cpu_without_vnni_warns(late: Exported, tmp_path, monkeypatch) -> None:
    static = _labelled_u8s8(late, tmp_path, "Int8StaticConfig")
    dynamic = _labelled_u8s8(late, tmp_path, "Int8DynamicConfig")
    monkeypatch.setenv(cpu.ENV_OVERRIDE, "avx2,fma")
    with pytest.warns(Int8FormatWarning, match="OpenVINO sums pairs"):
        RUNTIMES["openvino"](static, threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int8FormatWarning)  # OpenVINO runs dynamic INT8 exactly
        RUNTIMES["openvino"](dynamic, threads=1)


@pytest.mark.slow
def test_openvino_benchmark_compares_every_configuration(late: Exported, tmp_path, capsys) -> None:
    import json

    from tests.benchmark_scripts import load_benchmark

    out = tmp_path / "ov.json"
    code = load_benchmark("openvino_cpu").main([str(late.dir), "--int8", str(late.dir), "--batches", "1,4",
                                                "--rounds", "2", "--per-round", "1", "--json", str(out)])
    assert code == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    int8 = f"openvino int8 {late.dir.name}"
    assert {"eager fp32", "onnxruntime fp32", "openvino fp32, dynamic shapes", "openvino fp32", int8} <= set(rows)
    assert rows["openvino fp32, dynamic shapes"]["describe"]["static_shapes"] == 0
    assert rows["openvino fp32"]["describe"]["static_shapes"] == 2  # one per batch size, after warm-up
    assert rows["eager fp32"]["b4"]["x_eager_cpu"] == pytest.approx(1.0)
    assert "x_fp32_cpu" in rows[int8]["b4"]  # INT8 against the same backend's FP32
    assert "U8S8 kernel" in capsys.readouterr().out
