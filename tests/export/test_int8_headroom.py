"""benchmarks/int8_headroom.py: per-operator kernel time and the Amdahl bound it implies."""

from __future__ import annotations

import pytest

from tests.benchmark_scripts import load_benchmark
from tests.export.conftest import Exported


def test_profile_splits_kernel_time_and_bounds_the_int8_speedup(cross: Exported, odd_batch) -> None:
    pytest.importorskip("onnxruntime")
    headroom = load_benchmark("int8_headroom")
    prof = headroom.profile_ops(cross.dir, odd_batch, runs=3)
    ops = prof["ops_ms_per_run"]
    assert prof["kernel_ms_per_run"] == pytest.approx(sum(ops.values()), rel=0.02, abs=0.01)
    assert {"MatMul", "LayerNormalization"} <= set(ops) or "FusedMatMul" in ops
    share = sum(v for k, v in ops.items() if k in headroom.QUANTIZABLE) / sum(ops.values())
    assert prof["quantizable_share"] == pytest.approx(share, abs=0.002)
    assert 0 < share < 1  # a fusion model always has float-only work (norms, softmax, masking)
    assert prof["amdahl_bound"] == pytest.approx(1 / (1 - share), rel=0.02)
    parts = prof["modules_ms_per_run"]
    assert sum(parts.values()) == pytest.approx(prof["kernel_ms_per_run"], rel=0.02, abs=0.01)
    assert {"fusion", "image", "audio", "text"} <= set(parts)


def test_module_of_reads_the_model_part_from_node_names() -> None:
    headroom = load_benchmark("int8_headroom")
    assert headroom.module_of("/model/image/stem/stem.0/Conv_kernel_time") == "image"
    assert headroom.module_of("/model/fusion/blocks.0/self_attn/Softmax_kernel_time") == "fusion"
    assert headroom.module_of("/model/Where_kernel_time") == "(top level)"
    assert headroom.module_of("ReorderOutput_token_13_kernel_time") == "(top level)"
