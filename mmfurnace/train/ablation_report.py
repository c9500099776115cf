"""An ablation's results: one record per (variant, seed) run, the per-variant summary over
seeds, and the files written from them (results.md/.csv/.json, the bar chart, the curves)."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmfurnace.config import RunConfig
from mmfurnace.train import plots
from mmfurnace.train.ablation_grid import ConfigVariant

# ----------------------------------------------------------------------------- results


@dataclass
class RunRecord:
    """One (variant, seed) run. ``metrics`` is that run's results.json (empty when it failed)."""

    variant: str
    seed: int
    out_dir: Path
    status: str  # "ok" | "failed" | "reused"
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantSummary:
    """A variant aggregated over its seeds; numbers are None when no seed succeeded."""

    name: str
    overrides: tuple[str, ...]
    modalities: list[str] | None
    fusion: str | None
    epochs: int | None
    warm_start: list[str] | None  # modalities whose encoder started from another checkpoint
    status: str  # "ok" | "failed" (every seed failed) | "partial" (some did)
    error: str | None
    seeds_ok: list[int]
    metric_mean: float | None
    metric_std: float | None
    accuracy_mean: float | None
    accuracy_std: float | None
    macro_f1_mean: float | None
    macro_f1_std: float | None
    micro_f1_mean: float | None
    params: int | None  # every parameter, frozen encoders' included
    train_time_s: float | None
    trainable_params: int | None = None
    start: str | None = None  # how the encoders start: encoder_start()


@dataclass
class AblationResult:
    """What :func:`run_ablation` returns: summaries in variant order, every run, written files."""

    out_dir: Path
    metric: str
    variants: list[VariantSummary]
    runs: list[RunRecord]
    files: dict[str, Path]

    def summary(self, name: str) -> VariantSummary:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with n - 1); std 0.0 for one value; (None, None) for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ----------------------------------------------------------------------------- aggregation


def _split_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The test metrics of a results.json (the best validation ones when there was no test)."""
    return results.get("test") or results.get("best_valid") or {}


def summarise(variant: ConfigVariant, cfg: RunConfig | None, records: list[RunRecord], metric: str) -> VariantSummary:
    """``variant``'s runs over its seeds: mean and std of each metric, and the run status."""
    ok = [r for r in records if r.status != "failed"]
    failed = [r for r in records if r.status == "failed"]
    tests = [_split_metrics(r.metrics) for r in ok]

    def stat(key: str) -> tuple[float | None, float | None]:
        return mean_std([float(t[key]) for t in tests if isinstance(t.get(key), (int, float))])

    acc, macro = stat("accuracy"), stat("macro_f1")
    params = [r.metrics["params"] for r in ok if r.metrics.get("params") is not None]
    trainable = [r.metrics["trainable_params"] for r in ok
                 if r.metrics.get("trainable_params") is not None]
    times = [float(r.metrics["train_time_s"]) for r in ok if r.metrics.get("train_time_s") is not None]
    status = "ok" if not failed else ("partial" if ok else "failed")
    return VariantSummary(
        name=variant.name,
        overrides=variant.overrides,
        modalities=list(cfg.data.modalities) if cfg else None,
        fusion=cfg.model.fusion if cfg else None,
        epochs=cfg.train.epochs if cfg else None,
        warm_start=sorted(cfg.train.init_encoders) if cfg else None,
        status=status,
        error=failed[0].error if failed else None,
        seeds_ok=[r.seed for r in ok],
        metric_mean=stat(metric)[0],
        metric_std=stat(metric)[1],
        accuracy_mean=acc[0],
        accuracy_std=acc[1],
        macro_f1_mean=macro[0],
        macro_f1_std=macro[1],
        micro_f1_mean=stat("micro_f1")[0],
        params=int(params[0]) if params else None,
        train_time_s=statistics.fmean(times) if times else None,
        trainable_params=int(trainable[0]) if trainable else None,
        start=encoder_start(cfg) if cfg else None,
    )


def encoder_start(cfg: RunConfig) -> str:
    """Where the encoders of ``cfg``'s modalities start, by group: "checkpoints (image)"
    (train.init_encoders), "pretrained, frozen (audio, image, text)", "pretrained, top 2 blocks
    trainable (image)", "pretrained, fine-tuned (text)"; "scratch" when none of these."""
    groups: dict[str, list[str]] = {}
    for m in sorted(cfg.data.modalities):
        enc = cfg.model.encoders.get(m)
        if m in cfg.train.init_encoders:
            kind = "checkpoints"
        elif enc is not None and enc.pretrained:
            kind = ("pretrained, fine-tuned" if not enc.freeze else "pretrained, frozen"
                    if not enc.unfreeze_top else f"pretrained, top {enc.unfreeze_top} blocks trainable")
        elif enc is not None and enc.freeze:
            kind = "scratch, frozen"
        else:
            continue
        groups.setdefault(kind, []).append(m)
    return "; ".join(f"{k} ({', '.join(ms)})" for k, ms in groups.items()) or "scratch"


def _val_curve(run_dir: Path) -> dict[int, float]:
    """epoch -> validation accuracy, from a run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    curve: dict[int, float] = {}
    if not path.is_file():
        return curve
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        value = (record.get("val") or {}).get("accuracy") if record.get("kind") == "epoch" else None
        if isinstance(value, (int, float)):
            curve[int(record["epoch"])] = float(value)
    return curve


# ----------------------------------------------------------------------------- writing


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "—" if mean is None else f"{mean:.4f} ± {std:.4f}"


def _count(n: int | None) -> str:
    return "—" if n is None else str(n)


def write_tables(
    out_dir: Path, summaries: list[VariantSummary], runs: list[RunRecord], seeds: list[int], metric: str
) -> dict[str, Path]:
    """results.md, results.csv and results.json in ``out_dir``: {"markdown", "csv", "json"} -> path."""
    lines = [
        "# Ablation results",
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Test-set metrics of each run's best checkpoint; "
        "mean ± sample std (n - 1) over the seeds that finished. Train time is the mean per run. "
        "Params: every parameter of the model (frozen encoders included); trainable: those "
        "the run trained.",
        "",
        "| variant | modalities | fusion | encoders start from | epochs | accuracy (mean ± std) "
        "| macro-F1 (mean ± std) | params | trainable params | train time (s) | seeds ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        acc = _pm(s.accuracy_mean, s.accuracy_std) if s.status != "failed" else "**failed**"
        lines.append(
            f"| {s.name} | {', '.join(s.modalities) if s.modalities else '?'} | {s.fusion or '?'} "
            f"| {s.start or '?'} | {s.epochs or '?'} | {acc} "
            f"| {_pm(s.macro_f1_mean, s.macro_f1_std)} | {_count(s.params)} "
            f"| {_count(s.trainable_params)} | {_fmt(s.train_time_s, 1)} | {len(s.seeds_ok)}/{len(seeds)} |"
        )
    failed = [s for s in summaries if s.error]
    if failed:
        lines += ["", "## Failed runs", ""]
        for s in failed:
            first = (s.error or "").strip().splitlines()
            detail = " ".join(line.strip() for line in first)
            lines.append(f"- **{s.name}** ({s.status}): {detail}")
    md = out_dir / "results.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")

    csv_path = out_dir / "results.csv"
    columns = ["variant", "status", "modalities", "fusion", "warm_start", "start", "epochs", "overrides",
               "seeds_ok", f"{metric}_mean", f"{metric}_std", "accuracy_mean", "accuracy_std",
               "macro_f1_mean", "macro_f1_std", "micro_f1_mean", "params", "trainable_params",
               "train_time_s", "error"]
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(dict.fromkeys(columns))  # a metric named "accuracy" appears once
        for s in summaries:
            row = {
                "variant": s.name, "status": s.status, "modalities": "+".join(s.modalities or []),
                "fusion": s.fusion or "", "warm_start": "+".join(s.warm_start or []),
                "start": s.start or "", "trainable_params": s.trainable_params,
                "epochs": s.epochs, "overrides": " ".join(s.overrides),
                "seeds_ok": " ".join(map(str, s.seeds_ok)),
                f"{metric}_mean": s.metric_mean, f"{metric}_std": s.metric_std,
                "accuracy_mean": s.accuracy_mean, "accuracy_std": s.accuracy_std,
                "macro_f1_mean": s.macro_f1_mean, "macro_f1_std": s.macro_f1_std,
                "micro_f1_mean": s.micro_f1_mean, "params": s.params,
                "train_time_s": s.train_time_s, "error": s.error or "",
            }
            writer.writerow(["" if row[c] is None else row[c] for c in dict.fromkeys(columns)])

    json_path = out_dir / "results.json"
    payload = {
        "seeds": seeds,
        "metric": metric,
        "variants": [asdict(s) for s in summaries],
        "runs": [
            {"variant": r.variant, "seed": r.seed, "out_dir": str(r.out_dir), "status": r.status,
             "error": r.error, "test": _split_metrics(r.metrics) or None,
             "params": r.metrics.get("params"), "trainable_params": r.metrics.get("trainable_params"),
             "train_time_s": r.metrics.get("train_time_s")}
            for r in runs
        ],
    }
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return {"markdown": md, "csv": csv_path, "json": json_path}


def write_plots(
    out_dir: Path, summaries: list[VariantSummary], runs: list[RunRecord], metric: str
) -> dict[str, Path]:
    """The metric's bar chart and the validation curves in ``out_dir``: {"bar", "curves"} -> path."""
    nan = float("nan")
    bar = plots.bar_with_errors(
        [s.name for s in summaries],
        [s.metric_mean if s.metric_mean is not None else nan for s in summaries],
        [s.metric_std if s.metric_std is not None else nan for s in summaries],
        out_dir / f"{metric}.png",
        ylabel=f"test {metric}",
        title=f"Test {metric} per variant (mean ± std over seeds)",
    )
    series: dict[str, tuple[list[float], list[float]]] = {}
    for s in summaries:
        per_seed = [_val_curve(r.out_dir) for r in runs if r.variant == s.name and r.status != "failed"]
        epochs = sorted({e for c in per_seed for e in c})
        if epochs:
            means = [statistics.fmean(c[e] for c in per_seed if e in c) for e in epochs]
            series[s.name] = ([float(e) for e in epochs], means)
    curves = plots.line_curves(series, out_dir / "curves.png", xlabel="epoch",
                               ylabel="validation accuracy",
                               title="Validation accuracy per epoch (mean over seeds)", integer_x=True)
    return {"bar": bar, "curves": curves}
