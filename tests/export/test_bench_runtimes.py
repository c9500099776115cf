"""machine_info and the runtime benchmark (structure only: tests never judge speed)."""

from __future__ import annotations

import json

import pytest

from mmfurnace.bench.machine import ISA_FLAGS, machine_info
from mmfurnace.bench.runtime_report import (
    best_cpu_vs_eager,
    format_table,
    plot_runtimes,
    print_table,
)
from mmfurnace.bench.runtimes import bench_runtimes
from mmfurnace.export import make_example_batch
from tests.export.conftest import Exported


def test_machine_info_is_json_and_complete() -> None:
    info = machine_info()
    json.dumps(info)
    assert info["cpu"]["logical_cores"] >= 1
    assert info["cpu"]["usable_cores"] >= 1
    assert info["versions"]["torch"]
    assert info["versions"]["onnxruntime"]
    assert set(info["cpu"]["isa"]) in (set(), set(ISA_FLAGS))
    assert info["torch_threads"]["intra_op"] >= 1
    assert isinstance(info["gpus"], list)


def test_bench_runtimes_one_interleaved_run(late: Exported, tmp_path, capsys) -> None:
    batches = {
        b: make_example_batch(late.info, b, lengths={"audio": 30, "text": 9}, seed=b)
        for b in (1, 4)
    }
    result = bench_runtimes(
        late.dir,
        batches,
        runtimes=["eager", "onnxruntime", "tensorrt"],
        warmup=1,
        iters=3,
        rounds=2,
        threads=1,
        reference=False,
    )
    json.dumps(result)
    assert result["settings"]["iters"] == 2  # 3 // 2 per round, 2 rounds
    assert result["metrics"]["onnxruntime_fp32_b4_samples_per_s"] > 0
    assert result["metrics"]["eager_fp32_b1_latency_p99_ms"] > 0
    assert [(r["backend"], r["precision"]) for r in result["results"]] == [
        ("eager", "fp32"),
        ("onnxruntime", "fp32"),
    ]
    for r in result["results"]:
        assert set(r["latency_ms"]) >= {"p50", "p95", "p99"}
        # batch-1 latency and batch-1 throughput come from the same timings
        assert r["latency_ms"]["p50"] == pytest.approx(
            1e3 / r["batches"]["1"]["throughput"], rel=0.01
        )
        assert set(r["batches"]) == {"1", "4"}
        assert all(v["throughput"] > 0 for v in r["batches"].values())
    if not result["machine"]["gpus"]:
        assert any(s["backend"] == "tensorrt" for s in result["skipped"])
    best = best_cpu_vs_eager(result, 4)
    assert best is not None
    assert best["ratio"] > 0
    assert "onnxruntime" in format_table(result)
    print_table(result)
    assert "machine :" in capsys.readouterr().out
    png = plot_runtimes(result, tmp_path / "runtimes.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_old_engine_names_still_run_the_runtime_benchmark(monkeypatch) -> None:
    from mmfurnace.bench import engine_suite, engines, runtime_suite, runtimes

    seen = {}
    monkeypatch.setattr(runtimes, "bench_runtimes", lambda *a, **kw: seen.setdefault("bench", kw))
    monkeypatch.setattr(runtime_suite, "run_runtime_bench", lambda *a, **kw: seen.setdefault("suite", kw))
    monkeypatch.setattr(engines, "bench_runtimes", runtimes.bench_runtimes)
    monkeypatch.setattr(engine_suite, "run_runtime_bench", runtime_suite.run_runtime_bench)
    engines.bench_engines("export", {}, backends=["eager"], iters=3)
    engine_suite.run_engine_bench(None, backends=["onnxruntime"])
    assert seen == {"bench": {"runtimes": ["eager"], "iters": 3}, "suite": {"runtimes": ["onnxruntime"]}}
    assert engines.plot_engines is plot_runtimes
