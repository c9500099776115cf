"""benchmarks/pretrained.py prints its tables from the measured runs (the runs themselves need
the pretrained wheels and minutes of CPU; tests/models/test_pretrained_pipeline.py and
test_feature_cache.py run the same code paths on tiny data)."""

from __future__ import annotations

from tests.benchmark_scripts import load_benchmark


def run(name: str, cache: bool, epoch_s: float, hit: bool = False) -> dict:
    stats = {m: {"build_s": 0.0 if hit else 30.0, "fingerprint_s": 0.5, "hit": hit}
             for m in ("image", "text")} if cache else {}
    return {"name": name, "feature_cache": cache, "median_epoch_s": epoch_s, "cache": stats,
            "val_accuracy": [0.5, 0.6], "test_accuracy": 0.55}


def test_tables_show_ratios_to_the_cached_epoch_and_to_eager() -> None:
    bench = load_benchmark("pretrained")
    table = bench.training_table([run("a-cache-build", True, 2.0), run("b-no-cache", False, 50.0),
                                  run("c-cache-hit", True, 2.5, hit=True)])
    assert "| b-no-cache | off | - | - | 50.00 | 20.0× |" in table
    assert "| a-cache-build | on | 30.0 / 30.0 | 0.5 / 0.5 | 2.00 | 0.8× |" in table
    rows = [{"variant": "fp32-torch", "backend": "torch", "accuracy": 0.5, "p50_ms": 100.0,
             "throughput": 10.0, "size_bytes": 1e8, "latency_x_eager": 1.0, "throughput_x_eager": 1.0},
            {"variant": "int8-static-minmax", "backend": "onnxruntime", "accuracy": 0.5, "p50_ms": 25.0,
             "throughput": 40.0, "size_bytes": 3e7, "latency_x_eager": 4.0, "throughput_x_eager": 4.0}]
    assert "| int8-static-minmax | onnxruntime | 0.500 | 25.0 | 4.00× | 40.0 | 4.00× | 30.0 |" in (
        bench.inference_table(rows))
