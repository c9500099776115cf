"""benchmarks/int8_width.py trains the recipe at several widths and measures INT8 against FP32."""

from __future__ import annotations

import json

import pytest
import yaml

from mmfurnace.data.cache import write_packed
from tests.benchmark_scripts import load_benchmark
from tests.compress.tinydata import INFO, tiny_splits


def test_width_overrides_scale_the_image_and_audio_cnns() -> None:
    bench = load_benchmark("int8_width")
    assert bench.width_overrides(8) == ["model.encoders.image.channels=8", "model.encoders.audio.dim=32"]


@pytest.mark.slow
def test_benchmark_trains_each_width_and_reports_int8_against_fp32(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    splits = tiny_splits()
    samples, names = [], []
    for split in ("train", "valid", "test"):
        samples += splits[split].samples
        names += [split] * len(splits[split].samples)
    write_packed(tmp_path / "data" / "packed", samples, info=INFO, splits=names)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(tmp_path / "data"), "modalities": ["audio", "image", "text"], "batch_size": 32},
        "model": {"fusion": "cross_attention", "hidden_dim": 16, "heads": 2, "proj_dim": 8,
                  "encoders": {"audio": {"name": "cnn1d", "dim": 16}, "image": {"name": "lenet", "dim": 16},
                               "text": {"name": "transformer", "dim": 16, "layers": 1, "heads": 2}}},
        "train": {"lr": 0.004, "out_dir": str(tmp_path / "unused")},
    }))
    out_json = tmp_path / "width.json"
    bench = load_benchmark("int8_width")
    args = ["--widths", "2,8", "--epochs", "1", "--fusion-epochs", "1", "--config", str(config),
            "--out", str(tmp_path / "runs"), "--rounds", "2", "--profile-runs", "2", "--json", str(out_json)]
    assert bench.main(args) == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["width"] for r in rows] == [2, 8]
    narrow, wide = rows
    assert wide["params"] > narrow["params"]
    assert wide["macs"] > narrow["macs"]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["int8_samples_per_s"] / r["fp32_samples_per_s"], rel=1e-6)
        assert r["delta_pt"] == pytest.approx(100 * (r["int8_accuracy"] - r["fp32_accuracy"]), abs=1e-6)
        assert 0 < r["int8_able_share"] < 1
        assert r["amdahl_bound"] == pytest.approx(1 / (1 - r["int8_able_share"]), rel=0.05)
    for width in (2, 8):  # the fusion run started from that width's unimodal encoders
        assert (tmp_path / "runs" / f"width{width}" / "runs" / "cross_attention" / "best").is_dir()
    printed = capsys.readouterr().out
    assert "| width |" in printed
    assert "Amdahl bound" in printed
    # a second run reuses the trained checkpoints instead of training again
    assert bench.main(args) == 0
    assert "unimodal audio" not in capsys.readouterr().out
