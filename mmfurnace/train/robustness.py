"""Robustness to corrupted and missing modalities, measured as MultiBench does.

Corruptions (Batch -> Batch transforms registered in ``CORRUPTIONS``) live in
:mod:`mmfurnace.data.corruptions` and are re-exported here.

Metrics (``levels`` l_0 < ... < l_K, accuracies a_k, clean accuracy a_clean):

    AUC                   = sum_k (l_{k+1} - l_k) * (a_k + a_{k+1}) / 2        (trapezoid rule)
    relative robustness   = AUC / ((l_K - l_0) * a_clean)
    effective robustness  = trapezoid area of a_k - (b_k + a_0 - b_0), divided by (l_K - l_0),
                            for a baseline curve b on the same levels.

MultiBench (Liang et al., 2021) defines relative robustness as the trapezoid area under the
accuracy-vs-noise-level curve (levels 0, 0.1, ..., 1) and effective robustness as the
accuracy above a late-fusion baseline shifted to the method's clean accuracy. Here the area is
divided by the clean accuracy, so 1.0 means "no loss at any level" and numbers compare across
datasets; effective robustness is integrated rather than summed, so it does not depend on how
many levels were measured. MultiBench's final min-max normalisation across methods is not
applied: a report's numbers do not change when a method is added.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfurnace.data.batch import Batch

# Corruptions lived here before moving to data/; these names keep `robustness.<name>` working.
from mmfurnace.data.corruptions import (  # noqa: F401
    CORRUPTIONS,
    UNK_ID,
    Corruption,
    audio_frame_dropout,
    audio_white_noise,
    check_level,
    copy_batch,
    corrupt,
    corruptions_for,
    drop_modality,
    image_blur,
    image_gaussian_noise,
    image_occlusion,
    lookup_corruption,
    parse_noise_spec,
    remove_modality,
    text_drop,
    text_unk,
)
from mmfurnace.errors import InputError
from mmfurnace.train import plots
from mmfurnace.train.modality_use import describe_ignored, modality_use

DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

Curve = list[tuple[float, float]]


# ----------------------------------------------------------------------------- metrics


def _check_curve(curve: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    levels = [float(level) for level, _ in curve]
    accs = [float(acc) for _, acc in curve]
    if len(curve) < 2 or any(b <= a for a, b in itertools.pairwise(levels)):
        raise InputError(f"a robustness curve needs >= 2 points at increasing levels, got {levels}")
    return levels, accs


def curve_auc(curve: Sequence[tuple[float, float]]) -> float:
    """Trapezoid area under accuracy vs level: sum (l_{k+1} - l_k) (a_k + a_{k+1}) / 2."""
    levels, accs = _check_curve(curve)
    pairs = zip(itertools.pairwise(levels), itertools.pairwise(accs), strict=True)
    return sum((l1 - l0) * (a0 + a1) / 2 for (l0, l1), (a0, a1) in pairs)


def relative_robustness(curve: Sequence[tuple[float, float]], clean_acc: float) -> float:
    """MultiBench's relative robustness, normalised: AUC / ((l_K - l_0) * clean_acc).

    1.0 means the accuracy never drops below the clean one; see the module doc.
    """
    levels, _ = _check_curve(curve)
    if clean_acc <= 0:
        raise InputError(f"relative robustness needs a clean accuracy > 0, got {clean_acc}")
    return curve_auc(curve) / ((levels[-1] - levels[0]) * clean_acc)


def effective_robustness(
    curve: Sequence[tuple[float, float]], baseline: Sequence[tuple[float, float]]
) -> float:
    """Mean accuracy above ``baseline`` shifted to this curve's level-0 accuracy (MultiBench).

    = trapezoid area of a_k - (b_k + a_0 - b_0), divided by (l_K - l_0). Both curves must be
    measured at the same levels. Positive: degrades more gently than the baseline.
    """
    levels, accs = _check_curve(curve)
    base_levels, base = _check_curve(baseline)
    if base_levels != levels:
        raise InputError(f"curves are at different levels: {levels} vs {base_levels}")
    gap = [(lv, a - (b + accs[0] - base[0])) for lv, a, b in zip(levels, accs, base, strict=True)]
    return curve_auc(gap) / (levels[-1] - levels[0])


# ----------------------------------------------------------------------------- evaluation


def _accuracy(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | str,
    transform: Callable[[Batch], Batch] | None = None,
) -> float:
    from mmfurnace.models.predict import accuracy, predictions

    logits, labels = [], []
    for p in predictions(model, loader, device, transform=transform):
        logits.append(p.logits)
        labels.append(p.batch.labels.cpu())
    if not labels or sum(len(x) for x in labels) == 0:
        raise InputError("the evaluation loader yielded no samples")
    return accuracy(torch.cat(logits), torch.cat(labels), multilabel=bool(model.multilabel))


def robustness_curve(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | str,
    *,
    modality: str,
    corruption: str,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
    clean_acc: float | None = None,
) -> Curve:
    """Accuracy of ``model`` on ``loader`` with ``modality:corruption`` applied at each level.

    Every level restarts a generator seeded with ``seed`` (common random numbers: an occluded
    patch grows in place as the level rises). A level 0 reuses ``clean_acc`` when given.
    Returns ``[(level, accuracy), ...]``.
    """
    fn = lookup_corruption(modality, corruption)
    curve: Curve = []
    for level in levels:
        level = check_level(level)
        if level == 0.0 and clean_acc is not None:
            curve.append((level, clean_acc))
            continue
        generator = torch.Generator().manual_seed(seed)
        acc = _accuracy(model, loader, device, lambda b, lv=level, g=generator: fn(b, lv, g))
        curve.append((level, acc))
    return curve


def evaluate_robustness(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | str,
    *,
    modalities: Sequence[str],
    corruptions: Sequence[tuple[str, str]] | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
) -> dict[str, Any]:
    """Clean accuracy, a curve per (modality, corruption), and accuracy without each modality.

    ``corruptions`` defaults to every registered corruption of ``modalities``. Returns::

        {"levels": [...], "seed": int, "clean_accuracy": float,
         "curves": {"image:gaussian": {"modality", "corruption", "accuracy": [per level],
                                       "auc", "relative_robustness"}, ...},
         "removal": {"image": accuracy with image absent from every sample, ...},
         "chance_accuracy": accuracy with every modality absent,
         "modality_use": {"image": {"alone", "shuffled", "without", "gain_alone",
                                    "loss_shuffled", "ignored"}, ...}}

    A modality the model ignores (:mod:`mmfurnace.train.modality_use`: alone it is no better
    than chance and another row's content of it costs nothing) gets ``"ignored": True`` on its
    curves and no relative robustness (None): an unused input is not a robust one.
    """
    modalities = sorted(modalities)
    if corruptions is None:
        corruptions = [(m, c) for m in modalities for c in corruptions_for(m)]
    for modality, corruption in corruptions:
        lookup_corruption(modality, corruption)
        if modality not in modalities:
            raise InputError(f"corruption {modality}:{corruption}: the model has no {modality}; it uses {modalities}")
    levels = [check_level(level) for level in levels]
    clean = _accuracy(model, loader, device)
    curves: dict[str, Any] = {}
    for modality, corruption in corruptions:
        curve = robustness_curve(model, loader, device, modality=modality, corruption=corruption,
                                 levels=levels, seed=seed, clean_acc=clean)
        entry: dict[str, Any] = {"modality": modality, "corruption": corruption,
                                 "accuracy": [acc for _, acc in curve]}
        if len(curve) >= 2:
            entry["auc"] = curve_auc(curve)
            entry["relative_robustness"] = relative_robustness(curve, clean) if clean > 0 else None
        curves[f"{modality}:{corruption}"] = entry
    removal = {m: _accuracy(model, loader, device, _remover(m)) for m in modalities}
    result = {"levels": levels, "seed": seed, "clean_accuracy": clean, "curves": curves,
              "removal": removal}
    if len(modalities) > 1:
        result.update(_flag_ignored(model, loader, device, modalities, clean, removal, curves))
    return result


def _flag_ignored(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | str,
    modalities: list[str],
    clean: float,
    removal: dict[str, float],
    curves: dict[str, Any],
) -> dict[str, Any]:
    """Chance and single-modality accuracies; marks the curves of ignored modalities."""
    chance = _accuracy(model, loader, device, _keeper([], modalities))
    alone = {m: _accuracy(model, loader, device, _keeper([m], modalities)) for m in modalities}
    shuffled = {m: _accuracy(model, loader, device, _roller(m)) for m in modalities}
    use = modality_use(clean, chance, alone, shuffled, removal)
    for entry in curves.values():
        if use[entry["modality"]]["ignored"]:
            entry["ignored"] = True
            entry["relative_robustness"] = None
    return {"chance_accuracy": chance, "modality_use": use}


def _roller(modality: str) -> Callable[[Batch], Batch]:
    """Each row gets the next row's ``modality`` (input, valid mask, presence); the rest stays."""

    def fn(batch: Batch) -> Batch:
        out = copy_batch(batch)
        for part in (out.inputs, out.valid, out.present):
            if modality in part:
                part[modality] = torch.roll(part[modality], 1, dims=0)
        return out

    return fn


def _keeper(keep: list[str], modalities: list[str]) -> Callable[[Batch], Batch]:
    def fn(batch: Batch) -> Batch:
        for m in modalities:
            if m not in keep:
                batch = remove_modality(batch, m)
        return batch

    return fn


def _remover(modality: str) -> Callable[[Batch], Batch]:
    return lambda batch: remove_modality(batch, modality)


# ----------------------------------------------------------------------------- report


def write_robustness_report(
    result_by_method: dict[str, dict[str, Any]],
    out_dir: Path,
    *,
    baseline: str | None = None,
) -> dict[str, Path]:
    """Write ``robustness.md``, ``robustness.json`` and ``robustness.png`` into ``out_dir``.

    ``result_by_method`` maps a method name to :func:`evaluate_robustness`'s result. With
    ``baseline`` (a method name), each curve also gets the effective robustness against that
    method's curve. The PNG has one panel per (modality, corruption), one line per method.
    Returns {"markdown": path, "json": path, "png": path}.
    """
    if baseline is not None and baseline not in result_by_method:
        raise InputError(f"baseline {baseline!r} is not one of the methods: {sorted(result_by_method)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    effective = _effective_table(result_by_method, baseline) if baseline else {}
    payload = {"methods": result_by_method, "baseline": baseline, "effective_robustness": effective}
    json_path = out_dir / "robustness.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / "robustness.md"
    md_path.write_text(_markdown(result_by_method, effective, baseline), encoding="utf-8")
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for method, result in result_by_method.items():
        for key, entry in result["curves"].items():
            panels.setdefault(key, {})[method] = (result["levels"], entry["accuracy"])
    png_path = plots.curve_grid(panels, out_dir / "robustness.png", xlabel="corruption level",
                                ylabel="accuracy", title="Accuracy under corruption", ylim=(0.0, 1.02))
    return {"markdown": md_path, "json": json_path, "png": png_path}


def _effective_table(results: dict[str, dict[str, Any]], baseline: str) -> dict[str, dict[str, float]]:
    base = results[baseline]
    table: dict[str, dict[str, float]] = {}
    for method, result in results.items():
        for key, entry in result["curves"].items():
            if key not in base["curves"] or base["levels"] != result["levels"] or len(result["levels"]) < 2:
                continue
            curve = list(zip(result["levels"], entry["accuracy"], strict=True))
            ref = list(zip(base["levels"], base["curves"][key]["accuracy"], strict=True))
            table.setdefault(method, {})[key] = effective_robustness(curve, ref)
    return table


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _markdown(results: dict[str, dict[str, Any]], effective: dict[str, dict[str, float]],
              baseline: str | None) -> str:
    lines = ["# Robustness to corrupted and missing modalities", ""]
    lines += ["Accuracy at each corruption level; AUC is the trapezoid area under that curve and "
              "relative robustness is AUC / (level range x clean accuracy): 1.0 = no loss."]
    if baseline:
        lines += [f"Effective robustness is measured against **{baseline}** (MultiBench's definition)."]
    lines.append("")
    by_levels: dict[tuple[float, ...], list[str]] = {}
    for method, result in results.items():
        by_levels.setdefault(tuple(result["levels"]), []).append(method)
    for levels, methods in by_levels.items():
        header = ["method", "modality", "corruption", "clean"] + [f"@{lv:g}" for lv in levels]
        header += ["AUC", "relative robustness"] + (["effective robustness"] if baseline else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        keys = list(dict.fromkeys(k for m in methods for k in results[m]["curves"]))
        for key in keys:
            for method in methods:
                entry = results[method]["curves"].get(key)
                if entry is None:
                    continue
                row = [method, entry["modality"], entry["corruption"]]
                row += [_fmt(results[method]["clean_accuracy"])]
                row += [_fmt(a) for a in entry["accuracy"]]
                score = "ignored" if entry.get("ignored") else _fmt(entry.get("relative_robustness"))
                row += [_fmt(entry.get("auc")), score]
                if baseline:
                    row.append(_fmt(effective.get(method, {}).get(key)))
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    modalities = sorted({m for r in results.values() for m in r["removal"]})
    lines += ["## Accuracy with one modality removed from every sample", ""]
    header = ["method", "clean"] + [f"without {m}" for m in modalities]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, result in results.items():
        row = [method, _fmt(result["clean_accuracy"])]
        row += [_fmt(result["removal"].get(m)) for m in modalities]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + _use_lines(results, modalities)) + "\n"


def _use_lines(results: dict[str, dict[str, Any]], modalities: list[str]) -> list[str]:
    """The single-modality table and a line per ignored modality (multimodal methods only)."""
    rows = {k: r for k, r in results.items() if "modality_use" in r}
    if not rows:
        return []
    lines = ["", "## Is each modality used at all?", "",
             "Accuracy with only that modality, and with every row given another row's content of "
             "it. A modality that alone is no better than the model with no input and whose content "
             "is worth nothing is *ignored*: its curves above get no robustness score.", ""]
    header = ["method", "no modality (chance)"]
    header += [f"{m} {what}" for m in modalities for what in ("alone", "of another row")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for method, result in rows.items():
        use = result["modality_use"]
        cells = []
        for m in modalities:
            flag = " (ignored)" if m in use and use[m]["ignored"] else ""
            cells += ([_fmt(use[m]["alone"]) + flag, _fmt(use[m]["shuffled"])]
                      if m in use else ["—", "—"])
        lines.append("| " + " | ".join([method, _fmt(result["chance_accuracy"]), *cells]) + " |")
        notes += [f"- {method}, {line}" for line in describe_ignored(use, result["chance_accuracy"])]
    return lines + ([""] + notes if notes else [])
