"""Ablations: train a grid of config variants over several seeds, then tabulate and plot them.

A :class:`~mmfurnace.train.ablation_grid.ConfigVariant` is a name plus dotted overrides of a base run config
(``["model.fusion=late", "train.alpha=0"]``). :func:`expand_grid` builds the cartesian product
of a grid; :func:`run_ablation` trains every variant with every seed through
:func:`mmfurnace.train.recipe.train` and writes, into ``out_dir``:

    runs/<variant>/seed<k>/   each run's own output (results.json, metrics.jsonl, checkpoints)
    results.md                a table a person can read (mean ± std over seeds)
    results.csv / .json       the same for programs (the JSON also keeps every seed's numbers)
    <metric>.png              bar chart of the metric per variant, error bars = std over seeds
    curves.png                validation accuracy per epoch, one line per variant (seed mean)

A variant whose config is invalid or whose training raises is recorded as failed, with its
error, and the grid goes on. The std is the sample standard deviation (n - 1) over the seeds
that succeeded; it is 0 with one seed.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmfurnace.config import RunConfig
from mmfurnace.errors import ConfigError
from mmfurnace.train.ablation_grid import ConfigVariant, expand_grid, format_value, parse_grid
from mmfurnace.train.ablation_report import (
    AblationResult,
    RunRecord,
    VariantSummary,
    mean_std,
    summarise,
    write_plots,
    write_tables,
)
from mmfurnace.typed_config import apply_overrides, load_yaml, parse

# Grids and results live in ablation_grid / ablation_report; these names are imported from here.
__all__ = ["METRICS", "AblationResult", "ConfigVariant", "RunRecord", "VariantSummary", "expand_grid", "format_value",
           "mean_std", "parse_grid", "run_ablation"]

METRICS = ("accuracy", "macro_f1", "micro_f1", "loss", "consistency")  # keys of results.json "test"


def run_ablation(
    base: str | Path | RunConfig,
    variants: Sequence[ConfigVariant],
    *,
    seeds: Sequence[int] = (0,),
    out_dir: Path,
    progress: bool = True,
    datasets: Mapping[str, Dataset] | None = None,
    metric: str = "accuracy",
    resume: bool = False,
) -> AblationResult:
    """Train every variant with every seed and write the table and plots into ``out_dir``.

    base:     a YAML run config path, or a RunConfig; each variant's overrides apply on top,
              then ``train.seed`` and ``train.out_dir`` (= ``out_dir/runs/<variant>/seed<k>``)
              are set by the runner.
    datasets: pre-built datasets per split, shared by every run (as ``recipe.train`` takes
              them); a variant's ``data.modalities`` restricts what its runs see of them.
    metric:   the test metric (a key of results.json's ``test``) shown in the bar chart.
    resume:   reuse a run whose results.json was written with the same config, and continue
              a run that stopped before writing it from its last checkpoint (a finished run of
              another config fails and is kept). Without it, a run folder that already holds a
              checkpoint fails: the recipe never overwrites one.
    Returns an :class:`AblationResult`; ``files`` maps "markdown", "csv", "json", "bar",
    "curves" to the written paths.
    """
    from mmfurnace.train.recipe import train  # the recipe imports models and data: keep it lazy

    if metric not in METRICS:
        raise ConfigError(f"unknown ablation metric {metric!r}; known: {', '.join(METRICS)}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct ints, got {seeds}")
    names = [v.name for v in variants]
    if not variants or len(set(names)) != len(names):
        raise ConfigError(f"variants must be non-empty with distinct names, got {names}")
    raw, source = _base_raw(base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[RunRecord] = []
    summaries: list[VariantSummary] = []
    total = len(variants) * len(seeds)
    for vi, variant in enumerate(variants):
        first_cfg = None
        records = []
        for si, seed in enumerate(seeds):
            run_dir = out_dir / "runs" / variant.name / f"seed{seed}"
            if progress:
                print(f"[ablation {vi * len(seeds) + si + 1}/{total}] {variant.name} seed {seed}", flush=True)
            cfg, error = _variant_config(raw, variant, seed, source)
            first_cfg = first_cfg or cfg
            if cfg is None:
                records.append(RunRecord(variant.name, seed, run_dir, "failed", error))
                continue
            records.append(_run_one(train, cfg, seed, run_dir, variant.name, progress=progress,
                                    datasets=datasets, resume=resume))
        runs += records
        summaries.append(summarise(variant, first_cfg, records, metric))
        files = write_tables(out_dir, summaries, runs, seeds, metric)  # per variant: a crash keeps them
    files.update(write_plots(out_dir, summaries, runs, metric))
    return AblationResult(out_dir, metric, summaries, runs, files)


def _variant_config(
    raw: dict[str, Any], variant: ConfigVariant, seed: int, source: str
) -> tuple[RunConfig | None, str | None]:
    """The variant's config for one seed: ``{seed}`` in an override value becomes the seed, so
    a variant can name another variant's run of the same seed (e.g. to warm-start from it)."""
    overrides = [item.replace("{seed}", str(seed)) for item in variant.overrides]
    try:
        return parse(RunConfig, apply_overrides(raw, overrides),
                     source=f"{source} + variant {variant.name}", overrides=overrides), None
    except ConfigError as err:
        return None, f"ConfigError: {err}"


def _base_raw(base: str | Path | RunConfig) -> tuple[dict[str, Any], str]:
    if isinstance(base, RunConfig):
        return base.model_dump(mode="json"), "base config"
    return load_yaml(base), str(base)


def _run_one(
    train: Any,
    cfg: RunConfig,
    seed: int,
    run_dir: Path,
    name: str,
    *,
    progress: bool,
    datasets: Mapping[str, Dataset] | None,
    resume: bool,
) -> RunRecord:
    cfg = cfg.model_copy(deep=True)
    cfg.train.seed = seed
    cfg.train.out_dir = run_dir
    results_path = run_dir / "results.json"
    if resume and results_path.is_file():
        saved = json.loads(results_path.read_text(encoding="utf-8"))
        if _same_config(saved.get("config"), cfg):
            return RunRecord(name, seed, run_dir, "reused", None, saved)
        return RunRecord(name, seed, run_dir, "failed",
                         f"{run_dir} holds a finished run of a different config; it is kept as it "
                         "is: choose another out_dir for the changed grid")
    try:
        from mmfurnace.train.checkpoint import is_checkpoint

        again = resume and is_checkpoint(run_dir / "last")
        train(cfg, resume=again, progress=progress, datasets=datasets)
        metrics = json.loads(results_path.read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the grid
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        return RunRecord(name, seed, run_dir, "failed", f"{type(err).__name__}: {err}")
    return RunRecord(name, seed, run_dir, "ok", None, metrics)


def _same_config(saved: Any, cfg: RunConfig) -> bool:
    """Whether a results.json's config is ``cfg``, wherever the run folder has moved since."""
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        return False
    current = cfg.model_dump(mode="json")
    saved = {**saved, "train": {**saved["train"], "out_dir": current["train"]["out_dir"]}}
    return saved == current


