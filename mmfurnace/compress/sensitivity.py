"""Per-layer sensitivity to INT8 and a mixed-precision model within an accuracy budget.

1. Quantize one layer (or one block) at a time with onnxruntime static INT8 (everything else
   FP32) and measure the validation accuracy drop and the logits' SQNR against FP32.
2. Rank layers: larger accuracy drop first, lower SQNR breaking ties (on small validation
   sets many layers drop 0 points; SQNR still orders them).
3. Quantize everything, then keep the most sensitive layers in FP32 one at a time
   (``nodes_to_exclude``) until the drop is within ``budget`` points.
Outputs the table (markdown + CSV) and a bar chart of the per-layer drops.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmfurnace.compress.config import Int8StaticConfig, SensitivityConfig
from mmfurnace.compress.measure import sqnr_db
from mmfurnace.compress.quantize import kept_float, preprocessed, quantizable_nodes, quantize_onnx
from mmfurnace.compress.report import bar_chart, markdown_table, write_csv
from mmfurnace.compress.runners import OrtPredictor
from mmfurnace.data.batch import Batch
from mmfurnace.models.predict import accuracy, predictions

TABLE_COLUMNS = ("rank", "layer", "op_type", "params", "accuracy", "drop_pt", "sqnr_db", "fp32_in_mixed")


@dataclass
class SensitivityResult:
    """rows: one per layer/block, most sensitive first. mixed_dir: export of the mixed model.
    kept_fp32: layer names left in FP32. steps: (layers kept in FP32, accuracy) per try.
    files: table .md/.csv and the chart .png."""

    rows: list[dict[str, Any]]
    mixed_dir: Path
    kept_fp32: list[str]
    fp32_accuracy: float
    mixed_accuracy: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def analyse(
    export_dir: Path,
    work_dir: Path,
    config: SensitivityConfig,
    *,
    calibration: Sequence[Batch],
    validation: Sequence[Batch],
    multilabel: bool,
    threads: int | None = None,
) -> SensitivityResult:
    """Run the analysis on ``export_dir`` (an FP32 export), writing trial exports under
    ``work_dir`` (deleted as it goes) and the mixed model to ``work_dir/mixed``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    static = Int8StaticConfig(calibration=config.calibration, num_batches=config.num_batches,
                              int8_format=config.int8_format)
    calibration = list(calibration)[: config.num_batches]
    reference = _logits(OrtPredictor(export_dir, threads=threads), validation)
    labels = torch.cat([b.labels for b in validation])
    fp32_acc = _accuracy(reference, labels, multilabel)

    groups = _groups(preprocessed(export_dir), config, static.min_reduction)
    rows = []
    for name, members in groups.items():
        trial = work_dir / "trial"
        quantize_onnx(export_dir, trial, static, calibration=calibration, nodes=[n["name"] for n in members])
        logits = _logits(OrtPredictor(trial, threads=threads), validation)
        shutil.rmtree(trial)
        acc = _accuracy(logits, labels, multilabel)
        rows.append({
            "layer": name, "op_type": "+".join(sorted({n["op_type"] for n in members})),
            "params": sum(n["params"] for n in members), "accuracy": acc,
            "drop_pt": 100 * (fp32_acc - acc), "sqnr_db": sqnr_db(reference, logits),
            "nodes": [n["name"] for n in members],
        })
    rows.sort(key=lambda r: (-r["drop_pt"], r["sqnr_db"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank

    kept: list[str] = []
    steps = []
    mixed = work_dir / "mixed"
    for n_kept in range(len(rows) + 1):
        kept_rows = rows[:n_kept]
        exclude = tuple(n for r in kept_rows for n in r["nodes"])
        if mixed.exists():
            shutil.rmtree(mixed)
        mixed_cfg = Int8StaticConfig(calibration=config.calibration, num_batches=config.num_batches, exclude=exclude,
                                     int8_format=config.int8_format)
        if n_kept == len(rows):  # nothing left to quantize: the FP32 graph is the answer
            shutil.copytree(export_dir, mixed)
            acc = fp32_acc
        else:
            quantize_onnx(export_dir, mixed, mixed_cfg, calibration=calibration)
            acc = _accuracy(_logits(OrtPredictor(mixed, threads=threads), validation), labels, multilabel)
        kept = [r["layer"] for r in kept_rows]
        steps.append({"kept_fp32": len(kept), "accuracy": acc, "drop_pt": 100 * (fp32_acc - acc)})
        if 100 * (fp32_acc - acc) <= config.budget + 1e-9:
            break
    for row in rows:
        row["fp32_in_mixed"] = row["layer"] in kept
    return SensitivityResult(rows=rows, mixed_dir=mixed, kept_fp32=kept, fp32_accuracy=fp32_acc,
                             mixed_accuracy=steps[-1]["accuracy"], steps=steps)


def write_outputs(result: SensitivityResult, out_dir: Path, *, title: str) -> dict[str, Path]:
    """sensitivity.md / sensitivity.csv (the ranked table) and sensitivity.png (bar chart)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out_dir / "sensitivity.csv", result.rows, TABLE_COLUMNS)
    columns = [("rank", "rank"), ("layer", "layer / block"), ("op_type", "op"), ("params", "params"),
               ("accuracy", "acc % (only this INT8)"), ("drop_pt", "drop pt"), ("sqnr_db", "logits SQNR dB"),
               ("fp32_in_mixed", "FP32 in mixed")]
    steps = "\n".join(f"- {s['kept_fp32']} layer(s) in FP32: accuracy {100 * s['accuracy']:.2f} %, "
                      f"drop {s['drop_pt']:+.2f} pt" for s in result.steps)
    md = (f"# {title}\n\nFP32 accuracy {100 * result.fp32_accuracy:.2f} %; mixed-precision accuracy "
          f"{100 * result.mixed_accuracy:.2f} % with {len(result.kept_fp32)} layer(s) kept in FP32.\n\n"
          f"{markdown_table(result.rows, columns)}\n\nMixed-precision search:\n{steps}\n")
    md_path = out_dir / "sensitivity.md"
    md_path.write_text(md, encoding="utf-8")
    png = bar_chart(out_dir / "sensitivity.png", [r["layer"] for r in result.rows],
                    [r["drop_pt"] for r in result.rows], highlight=[r["fp32_in_mixed"] for r in result.rows],
                    xlabel="validation accuracy drop (pt) when only this layer is INT8",
                    title=f"{title} (red: kept in FP32)")
    result.files = {"md": md_path, "csv": csv_path, "png": png}
    return result.files


def _groups(onnx_path: Path, config: SensitivityConfig, min_reduction: int) -> dict[str, list[dict[str, Any]]]:
    # layers too short to quantize stay FP32 in every variant: nothing to analyse
    nodes = [n for n in quantizable_nodes(onnx_path) if not kept_float(n, min_reduction)]
    if config.max_layers is not None:
        nodes = sorted(nodes, key=lambda n: -n["params"])[: config.max_layers]
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        key = node["name"] if config.granularity == "layer" else _block(node["name"])
        groups.setdefault(key, []).append(node)
    return groups


def _block(name: str) -> str:
    """'/model/fusion/blocks.0/self_attn/MatMul' -> 'model/fusion/blocks.0' (module prefix)."""
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[:3]) if len(parts) > 3 else "/".join(parts[:-1]) or name


def _logits(predict: OrtPredictor, batches: Sequence[Batch]) -> torch.Tensor:
    return torch.cat([p.logits for p in predictions(predict, batches, None)])


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> float:
    return accuracy(logits, labels, multilabel=multilabel)

