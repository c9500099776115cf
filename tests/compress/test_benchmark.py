"""benchmarks/compression.py runs methods on a checkpoint + on-disk data and writes JSON."""

from __future__ import annotations

import json

import pytest

from tests.benchmark_scripts import load_benchmark


def _load_script():
    return load_benchmark("compression")


def test_method_specs_parse():
    bench = _load_script()
    assert bench.parse_spec("prune-channel:sparsity=0.5,fusion=late") == ("prune-channel", {"sparsity": 0.5, "fusion": "late"})
    assert bench.parse_spec("fp16") == ("fp16", {})


@pytest.mark.slow
def test_benchmark_writes_table_json_and_targets(trained, tiny_data_root, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = _load_script().main([
        "--checkpoint", str(trained), "--data-root", str(tiny_data_root), "--threads", "1",
        "--methods", "int8-static:num_batches=1", "prune-channel:max_steps=1",
        "--rounds", "2", "--latency-samples", "2", "--batch", "8",
        "--json", str(out_json), "--out", str(tmp_path / "report"),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "int8-static-minmax" in printed
    assert "pruned-channel-50" in printed
    assert "ISA" in printed
    result = json.loads(out_json.read_text())
    assert isinstance(result["machine"]["isa"], list)
    variants = {(r["variant"], r["backend"]) for r in result["rows"]}
    assert {("fp32-torch", "torch"), ("fp32-onnxruntime", "onnxruntime"), ("int8-static-minmax", "onnxruntime"),
            ("pruned-channel-50", "torch"), ("pruned-channel-50", "onnxruntime")} <= variants
    assert all("isa" in r for r in result["rows"])
    gates = {(r["variant"], r["backend"]): (r.get("gate"), r.get("budget_pt")) for r in result["rows"]}
    assert gates[("fp32-torch", "torch")] == (None, None)
    assert gates[("int8-static-minmax", "onnxruntime")][1] == 1.0  # INT8 family
    assert gates[("pruned-channel-50", "torch")][1] == 1.5  # pruning family
    assert {g for g, _ in gates.values()} <= {None, "PASS", "FAILED"}
    statuses = {t["target"]: t["status"] for t in result["targets"]}
    assert statuses["distilled student (torch)"] == "not run"
    assert statuses["best INT8 within 1 pt (onnxruntime)"] in ("PASS", "FAIL", "not run")
    assert (tmp_path / "report" / "compression_pareto.png").is_file()
