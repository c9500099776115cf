"""``compress(checkpoint_dir, method, out_dir=..., **options)``: the one entry point the CLI
(``mmfurnace compress CHECKPOINT --method ...``) and the benchmark call.

It loads a training checkpoint, builds the method's config from the options (validated),
runs the method, then measures the parent and every variant in the same run on the same
inputs (accuracy on the test split, latency/throughput interleaved, params, MACs, size) and
appends the rows to the report. Each variant is compared with the FP32 parent on the *same
runtime* (onnxruntime INT8 vs onnxruntime FP32; eager FP16 vs eager FP32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from mmfurnace.compress.config import build_config, config_dict
from mmfurnace.compress.context import FP32, Context, Variant
from mmfurnace.compress.gate import FAILED, apply_gate, budget_for
from mmfurnace.compress.measure import (
    benchmark,
    count_macs,
    count_params,
    cpu_info,
    evaluate_predict,
    size_on_disk,
    split_samples,
)
from mmfurnace.compress.methods import METHODS
from mmfurnace.compress.report import append_report, checkpoint_title
from mmfurnace.compress.runners import TorchPredictor
from mmfurnace.data.batch import Batch
from mmfurnace.data.info import check_same_data
from mmfurnace.errors import InputError, MissingDependencyError
from mmfurnace.threads import torch_threads
from mmfurnace.train.checkpoint import write_json_atomic


@dataclass
class CompressResult:
    """What :func:`compress` returns.

    rows: measured rows (parents first), as written to the report (see report.COLUMNS);
    each variant row has ``budget_pt`` and ``gate`` ("PASS" / "FAILED", see gate.py).
    artifacts: variant key (``name@runtime``) -> checkpoint or export directory, for the
    variants that PASSED the accuracy gate only: what a later step may pick.
    rejected: the same for the FAILED variants (kept on disk, for inspection).
    report: paths written (md, csv, png; sensitivity table/chart when that method ran).
    details: method-specific extras (fine-tune history, sensitivity table, pruning widths).
    """

    method: str
    config: dict[str, Any]
    out_dir: Path
    rows: list[dict[str, Any]]
    artifacts: dict[str, Path]
    report: dict[str, Path]
    details: dict[str, Any]
    rejected: dict[str, Path] = field(default_factory=dict)

    def row(self, variant: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["variant"] == variant)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The rows over their accuracy budget."""
        return [r for r in self.rows if r.get("gate") == FAILED]


# --- the entry point -----------------------------------------------------------------------------


def compress(
    checkpoint_dir: str | Path,
    method: str,
    *,
    out_dir: str | Path,
    data_cfg: Any | None = None,
    datasets: dict[str, Dataset] | None = None,
    report_dir: str | Path | None = "report",
    threads: int | None = None,
    rounds: int = 20,
    latency_samples: int = 16,
    throughput_batch: int = 32,
    accuracy_budget: float | None = None,
    openvino: bool | None = None,
    **options: Any,
) -> CompressResult:
    """Compress the model of ``checkpoint_dir`` with ``method`` (see ``METHODS.names()``),
    write the variant(s) under ``out_dir``, measure them against the FP32 parent and append
    the rows to ``report_dir`` (None: no report files).

    options: the method's config fields (e.g. ``sparsity=0.5``, ``calibration="entropy"``;
    ``finetune_epochs``/``lr``/``max_steps`` set the fine-tune). data_cfg: the data section
    to read (default: the checkpoint's); datasets: pre-built splits ("train", "valid",
    optional "test") instead. threads: intra-op threads for the method's own work (fine-tuning,
    calibration) and for both runtimes while measuring (default: torch's).
    rounds / latency_samples / throughput_batch: see :func:`measure_variants`.
    accuracy_budget: the accuracy points a variant may lose against its parent before it is
    FAILED (default: its method family's, gate.BUDGETS: INT8 1, pruning 1.5, student 2).
    A FAILED variant stays on disk and in the report, marked, but is left out of
    ``artifacts`` (``rejected`` lists it); the caller decides what failing means (the CLI
    exits with code 3).
    openvino: also run every onnxruntime variant (and the FP32 parent) on OpenVINO, its own
    kernels (INT8 included), each against OpenVINO FP32; None: for the INT8 methods, when
    OpenVINO is installed.
    Raises ConfigError for an unknown method or option, InputError for a directory that is
    not an mmfurnace checkpoint.
    """
    config = method_config(method, options)  # a typo fails before anything is loaded
    budget = budget_for(METHODS[method].family, accuracy_budget)
    ctx = prepare(checkpoint_dir, out_dir=out_dir, data_cfg=data_cfg, datasets=datasets, threads=threads)
    with torch_threads(threads):  # fine-tuning small models: see TrainConfig.threads
        variants = METHODS[method].run(ctx, config)
    if _wants_openvino(openvino, METHODS[method].family):
        variants += [ctx.ov_variant(v) for v in variants if v.runtime == "onnxruntime"]
    rows = measure_variants(ctx, parents(ctx, {v.runtime for v in variants}) + variants, rounds=rounds,
                            latency_samples=latency_samples, throughput_batch=throughput_batch)
    return _finish(ctx, method, config, variants, rows, budget, report_dir, ctx.out_dir / "result.json")


def compress_together(
    checkpoint_dir: str | Path,
    methods: Sequence[tuple[str, dict[str, Any]]],
    *,
    out_dir: str | Path,
    data_cfg: Any | None = None,
    datasets: dict[str, Dataset] | None = None,
    report_dir: str | Path | None = "report",
    threads: int | None = None,
    rounds: int = 20,
    latency_samples: int = 16,
    throughput_batch: int = 32,
    openvino: bool | None = None,
) -> list[CompressResult]:
    """:func:`compress` with several ``(method, options)`` on one checkpoint, sharing what each
    call would redo: loading the model and data, the FP32 export, and measuring the parents;
    every variant is measured in the same interleaved rounds. On a pretrained model the export
    and each accuracy pass cost minutes. One report section and one result per method
    (``out_dir/result-<method>.json``), each gated by its family's default budget."""
    plans = [(m, method_config(m, o), budget_for(METHODS[m].family, None)) for m, o in methods]
    ctx = prepare(checkpoint_dir, out_dir=out_dir, data_cfg=data_cfg, datasets=datasets, threads=threads)
    made: dict[str, list[Variant]] = {}
    with torch_threads(threads):
        for method, config, _ in plans:
            made[method] = METHODS[method].run(ctx, config)
    for method, _, _ in plans:
        if _wants_openvino(openvino, METHODS[method].family):
            made[method] += [ctx.ov_variant(v) for v in made[method] if v.runtime == "onnxruntime"]
    every = [v for vs in made.values() for v in vs]
    rows = measure_variants(ctx, parents(ctx, {v.runtime for v in every}) + every, rounds=rounds,
                            latency_samples=latency_samples, throughput_batch=throughput_batch)
    results = []
    for method, config, budget in plans:
        keys, runtimes = {_key(v) for v in made[method]}, {v.runtime for v in made[method]}
        mine = [dict(r) for r in rows if f"{r['variant']}@{r['backend']}" in keys
                or (r["parent"] is None and r["backend"] in runtimes)]
        results.append(_finish(ctx, method, config, made[method], mine, budget, report_dir,
                               ctx.out_dir / f"result-{method}.json"))
    return results


def _finish(ctx: Context, method: str, config: Any, variants: list[Variant], rows: list[dict[str, Any]],
            budget: float, report_dir: str | Path | None, result_path: Path) -> CompressResult:
    """Gate ``rows``, append them to the report, write ``result_path``; the method's result."""
    for row in rows:
        row.update(run=ctx.out_dir.name, checkpoint=str(ctx.meta.path), method=method if row["parent"] else "parent")
    failed = {(r["variant"], r["backend"]) for r in apply_gate(rows, budget)}
    report: dict[str, Path] = {}
    if report_dir is not None:
        report = append_report(report_dir, rows, title=f"{checkpoint_title(ctx.meta.path)}: {method}")
    if "sensitivity_files" in ctx.details:
        report.update({f"sensitivity_{k}": v for k, v in ctx.details.pop("sensitivity_files").items()})
    made = [v for v in variants if v.path is not None]
    artifacts = {_key(v): v.path for v in made if (v.name, v.runtime) not in failed}
    rejected = {_key(v): v.path for v in made if (v.name, v.runtime) in failed}
    result = CompressResult(method, config_dict(config), ctx.out_dir, rows, artifacts, report, ctx.details,
                            rejected)
    write_json_atomic(result_path, _jsonable(result))
    return result


def _wants_openvino(asked: bool | None, family: str) -> bool:
    from mmfurnace.export.runtimes import RUNTIMES

    available, why = RUNTIMES["openvino"].available()
    if asked and not available:
        raise MissingDependencyError(f"openvino=True: {why}")
    return available and (asked if asked is not None else family == "int8")


def method_config(method: str, options: dict[str, Any]) -> Any:
    """The validated config of ``method`` from its defaults and ``options``."""
    spec = METHODS[method]
    return build_config(spec.config, {**spec.defaults, **options}, method=method)


def run_method(ctx: Context, method: str, options: dict[str, Any]) -> list[Variant]:
    """Run one method on ``ctx``'s parent; returns its variants (not yet measured)."""
    return METHODS[method].run(ctx, method_config(method, options))


def prepare(checkpoint_dir: str | Path, *, out_dir: str | Path, data_cfg: Any | None = None,
            datasets: dict[str, Dataset] | None = None, threads: int | None = None) -> Context:
    """Load the checkpoint (InputError when it is not one) and its data; make ``out_dir``."""
    from mmfurnace.train.checkpoint import load_model

    model, meta = load_model(checkpoint_dir)
    splits = datasets if datasets is not None else _build_splits(data_cfg or meta.config.data)
    missing = [s for s in ("train", "valid") if s not in splits]
    if missing:
        raise InputError(f"compress needs the {' and '.join(missing)} split(s) of the data")
    for split, dataset in splits.items():
        if hasattr(dataset, "info"):
            check_same_data(meta.info, dataset.info, where=f"the {split} split")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Context(model, meta, splits, out_dir, threads=threads, batch_size=meta.config.data.batch_size,
                   seed=meta.config.train.seed)


def _build_splits(data_cfg: Any) -> dict[str, Dataset]:
    from mmfurnace.data.datasets import build_dataset

    splits = {}
    for split in ("train", "valid", "test"):
        try:
            splits[split] = build_dataset(data_cfg, split)
        except InputError:
            if split != "test":
                raise
    return splits


def parents(ctx: Context, runtimes: set[str]) -> list[Variant]:
    """The FP32 parent on each of ``runtimes`` (eager torch: the checkpoint; onnxruntime and
    openvino: its export)."""
    out = []
    model = ctx.model
    if "torch" in runtimes or not runtimes:
        path = Path(ctx.meta.path)
        out.append(Variant(FP32["torch"], "torch", TorchPredictor(model), count_params(model),
                               count_macs(model, ctx.example), path, size_on_disk(path / "model.safetensors")))
    if "onnxruntime" in runtimes or "openvino" in runtimes:
        export = ctx.fp32_export()
        ort = ctx.ort_variant(FP32["onnxruntime"], export, params=count_params(model),
                              macs=count_macs(model, ctx.example))
        if "onnxruntime" in runtimes:
            out.append(ort)
        if "openvino" in runtimes:
            ov = ctx.ov_variant(ort)
            ov.name = FP32["openvino"]
            out.append(ov)
    return out


def measure_variants(ctx: Context, variants: Sequence[Variant], *, rounds: int, latency_samples: int,
                     throughput_batch: int) -> list[dict[str, Any]]:
    """Accuracy on the eval split (test, else valid), then latency and throughput of all
    variants interleaved on the same inputs: ``latency_samples`` real batch-1 requests and one
    batch of ``throughput_batch`` real rows, ``rounds`` rounds. Returns one row per variant
    (report.COLUMNS keys); ``delta_pt`` and ``speedup`` compare with the same runtime's
    FP32 parent when it is among ``variants``."""
    eval_rows = [r for b in ctx.eval_batches for r in split_samples(b, len(b))]
    singles = eval_rows[:latency_samples]
    big = _concat(eval_rows, throughput_batch)
    timings = benchmark({_key(v): v.predict for v in variants}, singles=singles, batch=big,
                        rounds=rounds, threads=ctx.threads)
    isa = cpu_info()["isa"]
    rows, by_runtime = [], {}
    for v in variants:
        acc = evaluate_predict(v.predict, ctx.eval_batches, multilabel=ctx.multilabel)
        t = timings[_key(v)]
        is_parent = v.name == FP32.get(v.runtime)
        row = {"variant": v.name, "backend": v.runtime, "parent": None if is_parent else FP32[v.runtime],
               "accuracy": acc, "p50_ms": t.p50_ms, "p95_ms": t.p95_ms, "throughput": t.throughput,
               "cpu_throughput": t.cpu_throughput,
               "batch_size": t.batch_size,
               "size_bytes": v.size_bytes, "params": v.params, "macs": v.macs, "isa": isa,
               "path": str(v.path) if v.path else None, **v.notes}
        if is_parent:
            by_runtime[v.runtime] = row
        rows.append(row)
    for row in rows:
        parent = by_runtime.get(row["backend"])
        if parent is not None:
            row["delta_pt"] = 100 * (row["accuracy"] - parent["accuracy"])
            row["speedup"] = row["throughput"] / parent["throughput"]
            if row["cpu_throughput"] and parent["cpu_throughput"]:
                row["speedup_cpu"] = row["cpu_throughput"] / parent["cpu_throughput"]
    return rows


def _key(v: Variant) -> str:
    return f"{v.name}@{v.runtime}"


def _concat(rows: list[Batch], n: int) -> Batch:
    """A batch of ``n`` rows (cycling through ``rows``), collated like the loader does."""
    from mmfurnace.data.batch import Sample, collate_samples

    samples = []
    for i in range(n):
        b = rows[i % len(rows)]
        inputs = {m: x[0] for m, x in b.inputs.items() if bool(b.present[m][0])}
        samples.append(Sample(inputs=inputs, label=b.labels[0]))
    return collate_samples(samples, sorted(rows[0].present))


def load_compressed(directory: str | Path) -> tuple[nn.Module, Any]:
    """Load a checkpoint written by :func:`compress`: the same as
    :func:`mmfurnace.train.checkpoint.load_model`, which reads compression.json itself (kept
    for callers of this name)."""
    from mmfurnace.train.checkpoint import load_model

    return load_model(directory)


def _jsonable(result: CompressResult) -> dict[str, Any]:
    return {"method": result.method, "config": result.config, "out_dir": str(result.out_dir),
            "rows": result.rows, "artifacts": {k: str(v) for k, v in result.artifacts.items()},
            "rejected": {k: str(v) for k, v in result.rejected.items()},
            "report": {k: str(v) for k, v in result.report.items()}, "details": result.details}


def known_methods() -> dict[str, str]:
    """Method name -> one-line description (for the CLI's help)."""
    return {name: METHODS[name].doc for name in METHODS.names()}


__all__ = ["METHODS", "CompressResult", "Context", "Variant", "compress", "compress_together", "known_methods",
           "load_compressed",
           "measure_variants", "method_config", "parents", "prepare", "run_method"]
