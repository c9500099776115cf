"""ServeConfig: YAML + dotted overrides, and bad settings rejected at construction."""

from __future__ import annotations

import pytest

from mmfurnace.errors import ConfigError
from mmfurnace.serve.config import ServeConfig, load_serve_config


def test_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("max_batch_size: 16\nstages:\n  image: {runtime: onnxruntime}\n", encoding="utf-8")
    cfg = load_serve_config(path, ["max_wait_ms=2.5", "fusion.runtime=onnxruntime", "ray.num_replicas=2"])
    assert cfg.max_batch_size == 16
    assert cfg.max_wait_ms == 2.5
    assert cfg.stage("image").runtime == "onnxruntime"
    assert cfg.stage("audio").runtime == "auto"  # unconfigured: cpu / the best runtime installed
    assert cfg.fusion.runtime == "onnxruntime"
    assert cfg.ray.num_replicas == 2


def test_backend_the_old_name_of_runtime_is_still_read(tmp_path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("stages:\n  image: {backend: onnxruntime}\n", encoding="utf-8")
    cfg = load_serve_config(path, ["whole.backend=torchscript"])
    assert cfg.stage("image").runtime == "onnxruntime"
    assert cfg.whole.runtime == "torchscript"
    assert "backend" not in cfg.model_dump()["whole"]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["max_batch_size=0"], "max_batch_size"),
        (["max_queue=4", "max_batch_size=8"], "max_queue"),
        (["max_wait_ms=-1"], "max_wait_ms"),
        (["preprocess_mode=fork"], "preprocess_mode"),
        (["stages.video.device=cpu"], "stages.video"),
        (["stages.image.device=gpu"], "not 'cpu', 'cuda' or 'cuda:N'"),
        (["fusion.runtime=onnx"], "unknown runtime 'onnx'; known:"),
        (["fusion.runtime=onnxruntime-cuda"], "runs on a CUDA GPU"),
        (["max_batch_sizes=3"], "unknown key; allowed keys here: .*max_batch_size"),
        (["allowed_content_types.image=[Image/PNG]"], "lower-case"),
    ],
)
def test_bad_settings_name_the_key(overrides, words) -> None:
    with pytest.raises(ConfigError, match=words):
        load_serve_config(None, overrides)


def test_cuda_without_a_gpu_is_rejected_at_construction() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU is available on this machine"):
        ServeConfig(stages={"audio": {"device": "cuda:0"}})


def test_auto_picks_whole_on_one_device_and_the_best_runtime(export_dir) -> None:
    from mmfurnace.export.spec import load_spec
    from mmfurnace.serve.loading import export_formats, resolve_config

    spec = load_spec(export_dir)
    cfg, why = resolve_config(ServeConfig(), spec.modalities, export_formats(spec))
    assert cfg.mode == "whole"
    assert cfg.whole.runtime == "onnxruntime"  # never silently eager
    assert "every stage is on cpu" in why["mode"]
    # No ONNX file in the export: the next runtime that has one, and the reason says so.
    cfg, why = resolve_config(ServeConfig(), spec.modalities, {"torchscript"})
    assert cfg.whole.runtime == "torchscript"
    assert "onnxruntime: the export has no onnx file" in why["whole"] or "torchscript" in why["whole"]
    cfg, why = resolve_config(ServeConfig(), spec.modalities, set())
    assert cfg.whole.runtime == "eager"
    assert "no faster runtime usable" in why["whole"]
    # Configured: kept as given.
    cfg, why = resolve_config(ServeConfig(mode="split", fusion={"runtime": "eager"}), spec.modalities, None)
    assert cfg.mode == "split"
    assert cfg.fusion.runtime == "eager"
    assert cfg.stage("image").runtime == "onnxruntime"
