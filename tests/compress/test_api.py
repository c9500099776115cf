"""compress(): each method end to end on the trained tiny checkpoint — variants written,
measured against the FP32 parent on the same backend, and appended to the report."""

from __future__ import annotations

import csv
import json

import pytest

from mmfurnace.compress import compress, load_compressed
from mmfurnace.compress.measure import count_params
from mmfurnace.compress.report import checkpoint_title
from mmfurnace.export.runtimes import RUNTIMES

FAST = {"rounds": 2, "latency_samples": 2, "throughput_batch": 8, "threads": 1}


def _run(trained, splits, tmp_path, method, **options):
    return compress(trained, method, out_dir=tmp_path / method, datasets=splits, report_dir=tmp_path / "report",
                    **FAST, **options)


def _artifact(result, key):
    """The variant's directory: in ``artifacts`` when it passed the accuracy gate, in
    ``rejected`` when it failed (short fine-tunes on tiny data may), never in both."""
    variant, backend = key.split("@")
    row = next(r for r in result.rows if r["variant"] == variant and r["backend"] == backend)
    offered, other = (result.artifacts, result.rejected) if row["gate"] == "PASS" else (result.rejected, result.artifacts)
    assert key not in other
    return offered[key]


def _check_rows(result, backend, variant):
    parent = next(r for r in result.rows if r["variant"] == f"fp32-{backend}" and r["backend"] == backend)
    row = next(r for r in result.rows if r["variant"] == variant and r["backend"] == backend)
    assert row["parent"] == parent["variant"]
    assert row["delta_pt"] == pytest.approx(100 * (row["accuracy"] - parent["accuracy"]))
    assert row["speedup"] > 0
    assert row["speedup_cpu"] > 0  # the same ratio per second of CPU time
    assert row["p50_ms"] > 0
    assert row["size_bytes"] > 0
    assert isinstance(row["isa"], list)
    return parent, row


CASES = [  # method, options, backend, variant, max accuracy drop (pt), max size vs parent
    ("fp16", {}, "torch", "fp16", 3.5, 0.6),
    ("bf16", {}, "torch", "bf16", 3.5, 0.6),
    ("int8-dynamic", {}, "onnxruntime", "int8-dynamic", 5.0, None),  # tiny model: convs dominate
    ("int8-static", {"num_batches": 2, "min_reduction": 0}, "onnxruntime", "int8-static-minmax", 5.0, 0.9),
    ("prune-unstructured", {"sparsity": 0.5, "max_steps": 2}, "torch", "pruned-l1-50", 8.0, None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options", "backend", "variant", "max_drop", "max_size"), CASES,
                         ids=[c[0] for c in CASES])
def test_methods_end_to_end(trained, splits, tmp_path, method, options, backend, variant, max_drop, max_size):
    result = _run(trained, splits, tmp_path, method, **options)
    parent, row = _check_rows(result, backend, variant)
    if method.startswith("int8") and RUNTIMES["openvino"].available()[0]:
        # INT8 exports also run on OpenVINO's own kernels, against OpenVINO FP32
        _, ov = _check_rows(result, "openvino", variant)
        assert ov["delta_pt"] >= -max_drop
        assert ov["path"] == row["path"]  # the same file
    else:
        assert {r["backend"] for r in result.rows} <= {"torch", "onnxruntime"}
    assert row["delta_pt"] >= -max_drop  # 64 test rows: one row is 1.6 pt
    if max_size is not None:
        assert row["size_bytes"] < max_size * parent["size_bytes"]
    if method == "prune-unstructured":
        assert row["params"] < 0.7 * parent["params"]  # non-zero parameters
        assert row["macs"] == parent["macs"]  # dense kernels: zeros still multiply
    assert (result.out_dir / "result.json").is_file()
    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} >= {"compression.md", "compression.csv", "compression_pareto.png"}
    with (report / "compression.csv").open() as f:
        assert [r["variant"] for r in csv.DictReader(f)] == [r["variant"] for r in result.rows]


@pytest.mark.slow
def test_structured_pruning_end_to_end(trained, splits, tmp_path):
    result = _run(trained, splits, tmp_path, "prune-channel", sparsity=0.5, finetune_epochs=1, max_steps=3)
    for backend in ("torch", "onnxruntime"):
        parent, row = _check_rows(result, backend, "pruned-channel-50")
        assert row["params"] < 0.45 * parent["params"]
        assert row["macs"] < 0.4 * parent["macs"]
    model, _ = load_compressed(_artifact(result, "pruned-channel-50@torch"))
    assert count_params(model) == result.row("pruned-channel-50")["params"]
    assert result.details["widths"]["fusion"] == (16, 8)


@pytest.mark.slow
def test_sensitivity_end_to_end(trained, splits, tmp_path):
    result = _run(trained, splits, tmp_path, "sensitivity", granularity="block", num_batches=2, budget=0.5)
    table = result.details["sensitivity"]
    assert len(table) >= 5
    assert [r["rank"] for r in table] == list(range(1, len(table) + 1))
    drops = [(r["drop_pt"], -r["sqnr_db"]) for r in table]
    assert drops == sorted(drops, reverse=True)  # most sensitive first
    last = result.details["mixed_steps"][-1]
    assert last["drop_pt"] <= 0.5 or last["kept_fp32"] == len(table)
    kept = [r["layer"] for r in table if r["fp32_in_mixed"]]
    assert kept == [r["layer"] for r in table[: len(kept)]]  # the most sensitive stay FP32
    for key in ("sensitivity_md", "sensitivity_csv", "sensitivity_png"):
        assert result.report[key].is_file()
    _check_rows(result, "onnxruntime", "int8-mixed")


@pytest.mark.slow
def test_distill_and_qat_end_to_end(trained, splits, tmp_path):
    student = _run(trained, splits, tmp_path, "distill", width=0.5, fusion="late", finetune_epochs=1, max_steps=2)
    parent, row = _check_rows(student, "torch", "student")
    assert row["params"] < 0.75 * parent["params"]
    model, meta = load_compressed(_artifact(student, "student@torch"))  # a plain checkpoint
    assert meta.config.model.fusion == "late"
    qat = _run(trained, splits, tmp_path, "qat", max_steps=2, num_batches=1)
    parent, row = _check_rows(qat, "onnxruntime", "qat-int8")
    assert row["size_bytes"] < 0.9 * parent["size_bytes"]
    assert row["delta_pt"] >= -10.0  # 2 fake-quant steps from a trained model
    sidecar = json.loads((_artifact(qat, "qat-int8@onnxruntime") / "export.json").read_text())
    assert sidecar["compression"]["type"] == "QATConfig"
    assert sidecar["compression"]["int8"]["requested"] == "auto"  # the format chosen for this CPU


def test_methods_compressed_together_share_the_export_and_the_parents(trained, splits, tmp_path):
    """compress_together: both INT8 methods on one context -- one FP32 export, the parents
    measured once (the same row in both results), one report section and result per method."""
    from mmfurnace.compress import compress_together

    results = compress_together(trained, [("int8-dynamic", {}), ("int8-static", {"num_batches": 2})],
                                out_dir=tmp_path / "int8", datasets=splits,
                                report_dir=tmp_path / "report", openvino=False, **FAST)
    assert [r.method for r in results] == ["int8-dynamic", "int8-static"]
    for result, variant in zip(results, ("int8-dynamic", "int8-static-minmax"), strict=True):
        assert {(r["variant"], r["backend"]) for r in result.rows} == {
            ("fp32-onnxruntime", "onnxruntime"), (variant, "onnxruntime")}
        _check_rows(result, "onnxruntime", variant)
        assert result.rows[1]["gate"] in ("PASS", "FAILED")
        assert (tmp_path / "int8" / f"result-{result.method}.json").is_file()
    first, second = (next(r for r in res.rows if r["variant"] == "fp32-onnxruntime") for res in results)
    assert first["throughput"] == second["throughput"]  # measured once
    assert first["method"] == second["method"] == "parent"
    exports = sorted(p.parent.name for p in (tmp_path / "int8").rglob("export.json"))
    assert exports.count("fp32-onnxruntime") == 1
    report = (tmp_path / "report" / "compression.md").read_text()
    assert report.count(f"## {checkpoint_title(trained)}: int8-dynamic (") == 1
    assert report.count(": int8-static (") == 1


def test_report_sections_name_the_run_not_its_best_folder():
    assert checkpoint_title("report/fusion/runs/late/seed0/best") == "late/seed0/best"
    assert checkpoint_title("runs/x/last") == "runs/x/last"
    assert checkpoint_title("models/student") == "student"
