"""Baselines and the regression check: direction, normalization by the reference workload,
gating, and a real 2x slowdown (an injected sleep) caught in the same test run."""

from __future__ import annotations

import json
import time

import pytest

from mmfurnace.bench import regression
from mmfurnace.bench.regression import (
    benchmark_result,
    compare,
    format_compare,
    load_result,
    metric_direction,
    reference_workload,
    save_baseline,
)
from mmfurnace.bench.timing import median, percentiles, summarize, time_interleaved, time_repeated

OP_SECONDS = 0.02


def base_op() -> None:
    time.sleep(OP_SECONDS)


def slowed_op() -> None:  # the same work plus an injected sleep as long again: 2x the time
    base_op()
    time.sleep(OP_SECONDS)


# A sleep-based reference: its time hardly depends on how loaded the test machine is, so the
# test judges compare(), not the machine's noise. Sleeps overshoot by up to ~1 ms on a busy
# machine, so reference and op are long enough for that to stay a few percent.
REFERENCE = {"ref_sleep_ms": lambda: time.sleep(OP_SECONDS)}
TOLERANCE = 0.3  # far from both 1x (unchanged) and 2x (slowed)


def _measure(op) -> dict:
    return benchmark_result({"op_ms": op}, repeats=7, warmup=1, reference=REFERENCE)


def test_fails_on_a_2x_slowdown_and_passes_unchanged(tmp_path):
    baseline = _measure(base_op)
    unchanged = _measure(base_op)
    slowed = _measure(slowed_op)
    gate = ["op_ms"]  # a sleep costs no CPU time, so only the wall-clock metric can see it

    same = compare(unchanged, baseline, gate=gate, tolerance=TOLERANCE)
    assert same.ok, format_compare(same)
    assert same.exit_code == 0
    slow = compare(slowed, baseline, gate=gate, tolerance=TOLERANCE)
    assert not slow.ok, format_compare(slow)
    assert slow.exit_code == 1
    (row,) = [m for m in slow.metrics if m.name == "op_ms"]
    assert row.status == "regressed"
    assert 1.5 < row.slowdown < 2.7

    # the same verdicts through files and the command line
    base_file = save_baseline(baseline, tmp_path / "base.json")
    save_baseline(slowed, tmp_path / "slow.json")
    save_baseline(unchanged, tmp_path / "same.json")
    args = ["--gate", "op_ms", "--tolerance", str(TOLERANCE)]
    assert regression.main([str(tmp_path / "slow.json"), str(base_file), *args]) == 1
    assert regression.main([str(tmp_path / "same.json"), str(base_file), *args]) == 0


def _result(metrics: dict, reference: dict | None = None) -> dict:
    return {"metrics": metrics, "reference": reference or {}}


def test_direction_aware():
    base = _result({"latency_ms": 10.0, "eager_samples_per_s": 100.0})
    faster = compare(_result({"latency_ms": 5.0, "eager_samples_per_s": 200.0}), base)
    assert faster.ok
    assert {m.name: m.status for m in faster.metrics} == {"latency_ms": "improved", "eager_samples_per_s": "improved"}
    slower = compare(_result({"latency_ms": 20.0, "eager_samples_per_s": 50.0}), base)
    assert [m.name for m in slower.regressions] == ["eager_samples_per_s", "latency_ms"]
    assert all(m.slowdown == pytest.approx(2.0) for m in slower.metrics)


def test_metric_directions_from_names_and_overrides():
    assert metric_direction("eager_b32_samples_per_s") == "higher"
    assert metric_direction("eager_b32_samples_per_cpu_s") == "higher"
    assert metric_direction("achieved_flops") == "higher"
    assert metric_direction("eager_b1_latency_ms") == "lower"
    assert metric_direction("load_s") == "lower"
    assert metric_direction("export_seconds") == "lower"
    assert metric_direction("accuracy") is None
    assert metric_direction("accuracy", {"accuracy": "higher"}) == "higher"
    with pytest.raises(ValueError, match="direction"):
        metric_direction("x", {"x": "up"})
    report = compare(_result({"accuracy": 0.5}), _result({"accuracy": 0.9}))
    assert report.ok
    assert report.metrics[0].status == "unknown-direction"
    report = compare(_result({"accuracy": 0.5}), _result({"accuracy": 0.9}), directions={"accuracy": "higher"})
    assert not report.ok


def test_normalizes_by_the_reference_of_the_same_clock():
    base = _result({"op_ms": 10.0, "op_cpu_ms": 10.0, "rate_per_s": 100.0},
                   {"ref_a_ms": 1.0, "ref_b_ms": 2.0, "ref_a_cpu_ms": 1.0})
    # wall references are 2x slower in this run (a loaded machine), CPU references are not
    cur = _result({"op_ms": 20.0, "op_cpu_ms": 20.0, "rate_per_s": 50.0},
                  {"ref_a_ms": 2.0, "ref_b_ms": 4.0, "ref_a_cpu_ms": 1.0})
    report = compare(cur, base)
    assert report.reference_ratio == {"wall": pytest.approx(2.0), "cpu": pytest.approx(1.0)}
    status = {m.name: m.status for m in report.metrics}
    assert status == {"op_ms": "ok", "rate_per_s": "ok", "op_cpu_ms": "regressed"}
    assert not compare(cur, base, normalize=False).ok
    assert [m.name for m in compare(cur, base, normalize=False).regressions] == ["op_cpu_ms", "op_ms", "rate_per_s"]


def test_reference_ratio_is_a_median_so_one_burst_cannot_swing_it():
    base = _result({"op_ms": 10.0}, {"ref_a_ms": 1.0, "ref_b_ms": 1.0, "ref_c_ms": 1.0})
    cur = _result({"op_ms": 20.0}, {"ref_a_ms": 1.0, "ref_b_ms": 1.0, "ref_c_ms": 3.0})
    report = compare(cur, base)
    assert report.reference_ratio["wall"] == 1.0
    assert not report.ok


def test_sizes_are_not_normalized_and_tolerances_per_metric():
    base = _result({"model_mib": 10.0, "op_ms": 10.0}, {"ref_ms": 1.0})
    cur = _result({"model_mib": 13.0, "op_ms": 26.0}, {"ref_ms": 2.0})
    report = compare(cur, base)
    # op_ms is 2.6x raw but 1.3x once the 2x slower reference is divided out; sizes are not
    assert {m.name: round(m.slowdown, 3) for m in report.metrics} == {"model_mib": 1.3, "op_ms": 1.3}
    assert [m.name for m in report.regressions] == ["model_mib", "op_ms"]
    assert compare(cur, base, per_metric={"model_mib": 0.5, "op_ms": 0.5}).ok


def test_gate_shows_but_never_fails_other_metrics():
    base = _result({"a_ms": 1.0, "b_ms": 1.0})
    cur = _result({"a_ms": 3.0, "b_ms": 1.0})
    report = compare(cur, base, gate=["b_*"])
    assert report.ok
    assert {m.name: m.status for m in report.metrics}["a_ms"] == "info"
    assert report.metrics[0].slowdown == pytest.approx(3.0)


def test_new_and_missing_metrics_do_not_fail():
    report = compare(_result({"new_ms": 1.0}), _result({"old_ms": 1.0}))
    assert report.ok
    assert {m.name: m.status for m in report.metrics} == {"new_ms": "new", "old_ms": "missing"}


def test_print_compare_table(capsys):
    report = compare(_result({"latency_ms": 30.0}), _result({"latency_ms": 10.0}))
    regression.print_compare(report)
    out = capsys.readouterr().out
    assert "latency_ms" in out
    assert "REGRESSED" in out
    assert "3.00x" in out
    assert out.strip().splitlines()[-1].startswith("FAIL: 1 metric(s) regressed: latency_ms")
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_baseline_roundtrip_and_bad_files(tmp_path):
    result = _result({"x_ms": 1.5}, {"ref_ms": 2.0})
    path = save_baseline(result, tmp_path / "sub" / "b.json")
    assert load_result(path) == result
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_result(tmp_path / "bad.json")
    (tmp_path / "nometrics.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'metrics'"):
        load_result(tmp_path / "nometrics.json")
    with pytest.raises(ValueError, match="metrics"):
        save_baseline({}, tmp_path / "x.json")
    assert regression.main([str(tmp_path / "bad.json"), str(path)]) == 2


def test_reference_workload_measures_every_workload_twice():
    ref = reference_workload(repeats=2, warmup=1, matmul_size=16, memory_mib=1, batch=2)
    assert set(ref) == {f"ref_{n}{c}_ms" for n in ("matmul", "memory", "small_model", "python") for c in ("", "_cpu")}
    assert all(v > 0 for v in ref.values())


def test_timing_helpers():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert percentiles(list(range(1, 101)), (50, 95, 99)) == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01})
    assert summarize([0.001, 0.003])["median_ms"] == pytest.approx(2.0)
    calls = []
    assert len(time_repeated(lambda: calls.append(1), warmup=2, repeats=3)) == 3
    assert len(calls) == 5
    timings = time_interleaved({"a": lambda: None, "b": lambda: None}, warmup=0, rounds=3, per_round={"a": 2})
    assert len(timings.wall["a"]) == 6
    assert len(timings.wall["b"]) == 3
    assert len(timings.cpu["a"]) == 6
    with pytest.raises(ValueError, match="no values"):
        median([])
    with pytest.raises(ValueError, match="repeats"):
        time_repeated(lambda: None, repeats=0)


def test_bench_checks_the_baseline_file_before_benchmarking(tmp_path, monkeypatch):
    """`mmfurnace bench --compare BAD_FILE` says what is wrong with the file at once, as one
    line, instead of a traceback after the whole benchmark ran."""
    from typer.testing import CliRunner

    from mmfurnace.cli import app

    def benchmark_ran(*args, **kwargs):
        raise AssertionError("the benchmark ran before the baseline was checked")

    monkeypatch.setattr("mmfurnace.bench.runtime_suite.run_runtime_bench", benchmark_ran)
    (tmp_path / "bad.json").write_text("{not json")
    result = CliRunner().invoke(app, ["bench", "--compare", str(tmp_path / "bad.json")])
    assert result.exit_code == 2
    assert "bad.json: cannot read benchmark result" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["bench", "--compare", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "missing.json" in result.output
