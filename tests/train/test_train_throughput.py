"""Smoke test of benchmarks/train_throughput.py on its --tiny data (never asserts on speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.mark.slow
def test_train_throughput_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train_throughput.json"
    main = load_benchmark("train_throughput").main
    assert main(["--tiny", "--steps", "3", "--warmup", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    variants = result["variants"]
    assert set(variants) == {"plain", "mmfurnace"}
    for v in variants.values():
        assert v["samples_per_s"] > 0
        assert v["ms_per_step"] > 0
        assert v["steps"] == 3
        assert v["batch_size"] == result["batch_size"]
    assert variants["plain"]["samples"] > 0
    assert result["ratio_b_over_a"] > 0
    assert result["machine"]["cpu"]["model"]
    assert "ratio b/a" in capsys.readouterr().out
