"""The accuracy gate: budgets per method family, FAILED variants marked in md/csv/plot, kept
out of the outputs a later step picks, and `mmfurnace compress` exiting with code 3."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from mmfurnace.compress import compress
from mmfurnace.compress.gate import BUDGETS, FAILED, PASS, apply_gate, budget_for, describe_failures
from mmfurnace.compress.methods import METHODS
from mmfurnace.compress.report import COLUMNS, append_report
from mmfurnace.errors import ConfigError

FAST = {"rounds": 2, "latency_samples": 2, "throughput_batch": 8, "threads": 1}


def _rows(*deltas: float) -> list[dict]:
    parent = {"variant": "fp32-onnxruntime", "backend": "onnxruntime", "parent": None, "accuracy": 0.9,
              "delta_pt": 0.0, "speedup": 1.0, "p50_ms": 1.0, "throughput": 100.0, "size_bytes": 1000}
    return [parent] + [{**parent, "variant": f"v{i}", "parent": "fp32-onnxruntime", "delta_pt": d,
                        "accuracy": 0.9 + d / 100, "speedup": 1.5, "size_bytes": 500}
                       for i, d in enumerate(deltas)]


def test_every_method_has_a_family_budget():
    expected = {"fp16": 1.0, "bf16": 1.0, "int8-dynamic": 1.0, "int8-static": 1.0, "qat": 1.0,
                "sensitivity": 1.0, "prune-unstructured": 1.5, "prune-channel": 1.5, "distill": 2.0}
    assert {m: BUDGETS[METHODS[m].family] for m in METHODS.names()} == expected


def test_budget_override_and_bad_values():
    assert budget_for("pruning") == 1.5
    assert budget_for("int8", 0.25) == 0.25
    assert budget_for("student", 0) == 0.0
    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(ConfigError, match="budget"):
            budget_for("int8", bad)
    with pytest.raises(ConfigError, match="known: half, int8, pruning, student"):
        budget_for("telepathy")


def test_gate_marks_variants_over_budget_and_leaves_parents_alone():
    rows = _rows(+0.4, -1.0, -1.01, -22.3)
    failed = apply_gate(rows, 1.0)
    assert [r["gate"] for r in rows[1:]] == [PASS, PASS, FAILED, FAILED]  # a drop of exactly the budget passes
    assert all(r["budget_pt"] == 1.0 for r in rows[1:])
    assert "gate" not in rows[0]
    assert "budget_pt" not in rows[0]
    assert [r["variant"] for r in failed] == ["v2", "v3"]
    assert describe_failures(failed) == "v2@onnxruntime lost 1.01 pt (budget 1); v3@onnxruntime lost 22.30 pt (budget 1)"


def test_report_marks_failed_rows_in_md_csv_and_plot(tmp_path):
    rows = _rows(-0.37, -22.3)
    apply_gate(rows, 1.0)
    paths = append_report(tmp_path, rows, title="gate")
    md = paths["md"].read_text()
    assert "| gate (budget) |" in md
    assert "PASS (≤ 1 pt)" in md
    assert "**FAILED** (lost 22.30 > 1 pt)" in md
    with paths["csv"].open() as f:
        got = list(csv.DictReader(f))
    assert [r["gate"] for r in got] == ["", PASS, FAILED]
    assert got[2]["budget_pt"] == "1.0"
    assert paths["png"].stat().st_size > 0


def test_csv_from_an_older_release_is_migrated_not_misaligned(tmp_path):
    old = tmp_path / "compression.csv"
    old.write_text("variant,backend,accuracy\nint8-static-entropy,onnxruntime,0.88\n")
    rows = _rows(-2.0)
    apply_gate(rows, 1.0)
    append_report(tmp_path, rows, title="new", plot=False)
    with old.open() as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames == list(COLUMNS)
    assert got[0]["variant"] == "int8-static-entropy"
    assert got[0]["accuracy"] == "0.88"
    assert got[0]["gate"] == ""
    assert got[-1]["gate"] == FAILED


@pytest.mark.slow
def test_failed_variant_is_reported_and_not_offered(trained, splits, tmp_path):
    # 95 % of the weights zeroed with no fine-tune: far over the pruning budget of 1.5 pt
    result = compress(trained, "prune-unstructured", out_dir=tmp_path / "p", datasets=splits,
                      report_dir=tmp_path / "report", sparsity=0.95, finetune_epochs=0, **FAST)
    for backend in ("torch", "onnxruntime"):
        row = next(r for r in result.rows if r["variant"] == "pruned-l1-95" and r["backend"] == backend)
        assert row["delta_pt"] < -1.5
        assert (row["gate"], row["budget_pt"]) == (FAILED, 1.5)
        key = f"pruned-l1-95@{backend}"
        assert key not in result.artifacts
        assert result.rejected[key].is_dir()  # kept on disk for inspection
    assert len(result.failed) == 2
    saved = json.loads((result.out_dir / "result.json").read_text())
    assert saved["artifacts"] == {}
    assert set(saved["rejected"]) == {"pruned-l1-95@torch", "pruned-l1-95@onnxruntime"}
    assert "**FAILED**" in (tmp_path / "report" / "compression.md").read_text()
    # the same variant within a budget the user sets passes and is offered
    loose = compress(trained, "prune-unstructured", out_dir=tmp_path / "q", datasets=splits, report_dir=None,
                     sparsity=0.95, finetune_epochs=0, accuracy_budget=100.0, **FAST)
    assert set(loose.artifacts) == {"pruned-l1-95@torch", "pruned-l1-95@onnxruntime"}
    assert not loose.failed


@pytest.mark.slow
def test_cli_exits_3_when_a_variant_fails_the_gate(trained, splits, tmp_path, monkeypatch):
    import mmfurnace.compress.api as api
    from mmfurnace.cli import app

    real = api.compress
    # the tiny checkpoint's data lives in memory: hand its splits to the real compress()
    monkeypatch.setattr(api, "compress", lambda *a, **k: real(*a, datasets=splits, **{**k, **FAST}))
    args = ["compress", str(trained), "--method", "prune-unstructured", "-o", "sparsity=0.95",
            "-o", "finetune_epochs=0", "--out", str(tmp_path / "out"), "--report", str(tmp_path / "report")]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 3, failed.output
    assert "FAILED" in failed.output
    assert "pruned-l1-95@torch lost" in failed.output
    assert (tmp_path / "report" / "compression.md").is_file()  # the report is written before exiting
    passed = CliRunner().invoke(app, [*args, "--budget", "100"])
    assert passed.exit_code == 0, passed.output
    assert "PASS" in passed.output
