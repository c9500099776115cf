"""Ablations: train a grid of config variants over several seeds, then tabulate and plot them.

A :class:`Variant` is a name plus dotted overrides of a base run config
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

import csv
import itertools
import json
import math
import re
import statistics
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch.utils.data import Dataset

from mmfurnace.config import RunConfig
from mmfurnace.errors import ConfigError
from mmfurnace.train import plots
from mmfurnace.typed_config import apply_overrides, load_yaml, parse

_NAME_OK = re.compile(r"[^A-Za-z0-9._+=,-]")
METRICS = ("accuracy", "macro_f1", "micro_f1", "loss", "consistency")  # keys of results.json "test"
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class Variant:
    """One configuration of an ablation: a name (also its folder name) and dotted overrides."""

    name: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not self.name or self.name in (".", "..") or _NAME_OK.search(self.name):
            raise ConfigError(
                f"variant name {self.name!r} must be non-empty and use only letters, digits and ._+=,-"
            )
        for item in self.overrides:
            if "=" not in item:
                raise ConfigError(f"variant {self.name}: override {item!r} is not key.path=value")


# ----------------------------------------------------------------------------- grids


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """Parse command-line grid specs into ``{dotted key: [values]}``.

    Syntax, one spec per key: ``key.path=V1,V2,...``. Values are YAML (``0.1`` is a float,
    ``true`` a bool, ``early`` a string, ``[audio, image]`` a list). Values are separated by
    commas outside brackets, or, when the spec contains ``|``, by ``|`` only. So::

        model.fusion=early,late                       -> ["early", "late"]
        train.alpha=0,0.1                             -> [0, 0.1]
        data.modalities=[image]|[audio,image,text]    -> [["image"], ["audio", "image", "text"]]
        data.modalities=[image],[audio,text]          -> [["image"], ["audio", "text"]]
        train.lr=1e-3,3e-3                            -> [0.001, 0.003]

    Raises ConfigError for a spec without ``=``, an empty value, invalid YAML or a key given
    twice.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"grid spec {spec!r} is not of the form key.path=value1,value2")
        if key in grid:
            raise ConfigError(f"grid spec {spec!r}: {key} is given twice")
        pieces = text.split("|") if "|" in text else _split_top_level(text)
        values = []
        for piece in pieces:
            if not piece.strip():
                raise ConfigError(f"grid spec {spec!r}: empty value (check for a stray ',' or '|')")
            try:
                values.append(_number(yaml.safe_load(piece)))
            except yaml.YAMLError as err:
                raise ConfigError(f"grid spec {spec!r}: {piece!r} is not valid YAML: {err}") from None
        grid[key] = values
    return grid


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-3 (no dot) as a string; on a command line it means the number.
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    return value


def _split_top_level(text: str) -> list[str]:
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[Variant]:
    """The cartesian product of ``grid`` (dotted key -> values) as named variants.

    The first key varies slowest. Names read ``fusion=early,alpha=0.1,modalities=audio+image``:
    the last part of each key (the whole key when two keys share a last part), list values
    joined by ``+``. An empty grid gives the single variant ``base`` with no overrides.
    """
    if not grid:
        return [Variant("base")]
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"grid key {key}: expected a non-empty list of values, got {values!r}")
    short = {key: key.rsplit(".", 1)[-1] for key in grid}
    labels = {k: (s if list(short.values()).count(s) == 1 else k) for k, s in short.items()}
    variants: list[Variant] = []
    seen: set[str] = set()
    for combo in itertools.product(*grid.values()):
        pairs = list(zip(grid, combo, strict=True))
        name = ",".join(f"{labels[k]}={_name_value(v)}" for k, v in pairs)
        name = _NAME_OK.sub("_", name)
        base, n = name, 2
        while name in seen:
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        variants.append(Variant(name, tuple(f"{k}={format_value(v)}" for k, v in pairs)))
    return variants


def format_value(value: Any) -> str:
    """Write ``value`` as the YAML text an override needs; ``yaml.safe_load`` reads it back."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{format_value(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value and not any(c in value for c in ",[]{}#")
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    if isinstance(value, float):
        return _float_text(value)
    return json.dumps(value if not isinstance(value, Path) else str(value))


def _float_text(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:  # YAML 1.1 needs the dot: 1e-05 -> 1.0e-05
        text = f"{mantissa}.0e{exponent}"
    return text


def _name_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_name_value(v) for v in value) or "none"
    if isinstance(value, dict):
        return "+".join(f"{k}-{_name_value(v)}" for k, v in value.items()) or "none"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


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
    params: int | None
    train_time_s: float | None


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


# ----------------------------------------------------------------------------- running


def run_ablation(
    base: str | Path | RunConfig,
    variants: Sequence[Variant],
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
        summaries.append(_summarise(variant, first_cfg, records, metric))
        files = _write_tables(out_dir, summaries, runs, seeds, metric)  # per variant: a crash keeps them
    files.update(_write_plots(out_dir, summaries, runs, metric))
    return AblationResult(out_dir, metric, summaries, runs, files)


def _variant_config(
    raw: dict[str, Any], variant: Variant, seed: int, source: str
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


# ----------------------------------------------------------------------------- aggregation


def _split_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The test metrics of a results.json (the best validation ones when there was no test)."""
    return results.get("test") or results.get("best_valid") or {}


def _summarise(variant: Variant, cfg: RunConfig | None, records: list[RunRecord], metric: str) -> VariantSummary:
    ok = [r for r in records if r.status != "failed"]
    failed = [r for r in records if r.status == "failed"]
    tests = [_split_metrics(r.metrics) for r in ok]

    def stat(key: str) -> tuple[float | None, float | None]:
        return mean_std([float(t[key]) for t in tests if isinstance(t.get(key), (int, float))])

    acc, macro = stat("accuracy"), stat("macro_f1")
    params = [r.metrics["params"] for r in ok if r.metrics.get("params") is not None]
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
    )


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


def _start(warm: list[str] | None) -> str:
    if warm is None:
        return "?"
    return f"checkpoints ({', '.join(warm)})" if warm else "scratch"


def _write_tables(
    out_dir: Path, summaries: list[VariantSummary], runs: list[RunRecord], seeds: list[int], metric: str
) -> dict[str, Path]:
    lines = [
        "# Ablation results",
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Test-set metrics of each run's best checkpoint; "
        "mean ± sample std (n - 1) over the seeds that finished. Train time is the mean per run.",
        "",
        "| variant | modalities | fusion | encoders start from | epochs | accuracy (mean ± std) "
        "| macro-F1 (mean ± std) | params | train time (s) | seeds ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        acc = _pm(s.accuracy_mean, s.accuracy_std) if s.status != "failed" else "**failed**"
        lines.append(
            f"| {s.name} | {', '.join(s.modalities) if s.modalities else '?'} | {s.fusion or '?'} "
            f"| {_start(s.warm_start)} | {s.epochs or '?'} | {acc} "
            f"| {_pm(s.macro_f1_mean, s.macro_f1_std)} | {s.params if s.params is not None else '—'} "
            f"| {_fmt(s.train_time_s, 1)} | {len(s.seeds_ok)}/{len(seeds)} |"
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
    columns = ["variant", "status", "modalities", "fusion", "warm_start", "epochs", "overrides", "seeds_ok",
               f"{metric}_mean", f"{metric}_std", "accuracy_mean", "accuracy_std", "macro_f1_mean",
               "macro_f1_std", "micro_f1_mean", "params", "train_time_s", "error"]
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(dict.fromkeys(columns))  # a metric named "accuracy" appears once
        for s in summaries:
            row = {
                "variant": s.name, "status": s.status, "modalities": "+".join(s.modalities or []),
                "fusion": s.fusion or "", "warm_start": "+".join(s.warm_start or []),
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
             "params": r.metrics.get("params"), "train_time_s": r.metrics.get("train_time_s")}
            for r in runs
        ],
    }
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return {"markdown": md, "csv": csv_path, "json": json_path}


def _write_plots(
    out_dir: Path, summaries: list[VariantSummary], runs: list[RunRecord], metric: str
) -> dict[str, Path]:
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
