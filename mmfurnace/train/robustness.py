"""Robustness to corrupted and missing modalities, measured as MultiBench does.

A corruption takes a :class:`~mmfurnace.data.batch.Batch`, a severity ``level`` in [0, 1] and
a ``torch.Generator`` (never the global RNG), and returns a new batch; the input batch is not
modified. Level 0 returns the batch unchanged. Only rows whose modality is present are touched,
and padded frames / PAD tokens stay as they were. Randomness is drawn on the CPU and then moved
to the batch's device, so a seed gives the same corruption on every device.

Corruptions, registered in :data:`CORRUPTIONS` as ``"<modality>:<name>"``:

    image:gaussian   add N(0, (level * s)^2) noise, s = std of the batch's present images
                     (level 1 is a signal-to-noise ratio of 0 dB).
    image:blur       Gaussian blur, sigma = level * min(height, width) / 8 pixels
                     (edges replicated).
    image:occlusion  one rectangle per image, with the image's aspect ratio (a square for a
                     square image), covering ``level`` of its area, at a random place, set to 0.
    audio:white      add N(0, (level * s_f)^2) noise to every real frame, s_f = std of feature f
                     over the batch's real frames.
    audio:dropout    zero round(level * n) of each sample's n real frames, chosen at random.
                     The padding mask is unchanged: a dropped frame is still a time step (as a
                     lost packet is), and padded frames stay zero and masked.
    text:unk         replace round(level * n) of each sample's n word tokens by [UNK] (id 1).
    text:drop        remove round(level * n) word tokens, shift the rest left, pad the tail with
                     PAD (id 0) and shrink the padding mask; at least one word token is kept.
                     Word tokens are the real ones other than PAD, [CLS] and [SEP] (the ids of
                     mmfurnace's tokenizer), which both text corruptions leave in place.
    <m>:missing      mark modality m absent (present[m] = False, its rows reset to padding) in
                     round(level * n) of the n samples that have it; level 1 removes it
                     (:func:`remove_modality`).

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
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.data.batch import PAD_ID, Batch
from mmfurnace.data.text import CLS_ID, SEP_ID, SPECIAL_TOKENS
from mmfurnace.errors import InputError
from mmfurnace.modalities import MODALITIES
from mmfurnace.registry import Registry
from mmfurnace.train import plots
from mmfurnace.train.modality_use import describe_ignored, modality_use

UNK_ID = SPECIAL_TOKENS.index("[UNK]")
DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

Corruption = Callable[[Batch, float, torch.Generator], Batch]
CORRUPTIONS: Registry[Corruption] = Registry("corruption")
Curve = list[tuple[float, float]]


# ----------------------------------------------------------------------------- helpers


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise InputError(f"corruption level must be in [0, 1], got {level}")
    return level


def _copy(batch: Batch) -> Batch:
    return Batch(dict(batch.inputs), dict(batch.padding), dict(batch.present), batch.labels)


def _rand(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(tuple(shape), generator=generator).to(like.device)


def _randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)


def _choose(eligible: Tensor, level: float, generator: torch.Generator, *, keep: int = 0) -> Tensor:
    """Pick round(level * n_i) of the n_i eligible positions in each row of ``eligible``.

    eligible: (rows, positions) bool. ``keep`` positions per row are never picked (when the
    row has that many). Returns a (rows, positions) bool mask, a subset of ``eligible``.
    """
    scores = _rand(eligible.shape, generator, eligible).masked_fill(~eligible, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    n = eligible.sum(dim=1)
    k = torch.floor(level * n.double() + 0.5).long()
    k = torch.minimum(k, (n - keep).clamp(min=0))
    return (rank < k[:, None]) & eligible


def _rows(batch: Batch, modality: str) -> Tensor:
    """(batch,) bool: rows that have ``modality``."""
    return batch.present[modality].to(batch.inputs[modality].device)


def _real(batch: Batch, modality: str) -> Tensor:
    """(batch, seq) bool: real (not padded) frames/tokens of present rows."""
    x = batch.inputs[modality]
    mask = batch.padding.get(modality)
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.to(x.device) & _rows(batch, modality)[:, None]


def _with_input(batch: Batch, modality: str, value: Tensor, padding: Tensor | None = None) -> Batch:
    out = _copy(batch)
    out.inputs[modality] = value
    if padding is not None:
        out.padding[modality] = padding
    return out


def _skip(batch: Batch, modality: str, level: float) -> bool:
    return level == 0.0 or modality not in batch.inputs


# ----------------------------------------------------------------------------- image


@CORRUPTIONS.register("image:gaussian")
def image_gaussian_noise(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Gaussian noise on present images (batch, channels, height, width); see module doc."""
    level = _check_level(level)
    if _skip(batch, "image", level):
        return _copy(batch)
    x, rows = batch.inputs["image"], _rows(batch, "image")
    scale = x[rows].float().std(correction=0) if bool(rows.any()) else x.new_tensor(1.0)
    scale = scale if float(scale) > 0 else x.new_tensor(1.0)
    noisy = x + _randn(x.shape, generator, x) * (level * scale).to(x.dtype)
    return _with_input(batch, "image", torch.where(rows[:, None, None, None], noisy, x))


@CORRUPTIONS.register("image:blur")
def image_blur(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Gaussian blur of present images, sigma = level * min(H, W) / 8; deterministic."""
    level = _check_level(level)
    if _skip(batch, "image", level):
        return _copy(batch)
    x, rows = batch.inputs["image"], _rows(batch, "image")
    b, c, h, w = x.shape
    sigma = level * min(h, w) / 8
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    blurred = flat.reshape(b, c, h, w)
    return _with_input(batch, "image", torch.where(rows[:, None, None, None], blurred, x))


@CORRUPTIONS.register("image:occlusion")
def image_occlusion(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Zero one rectangle covering ``level`` of each present image's area, at a random place."""
    level = _check_level(level)
    if _skip(batch, "image", level):
        return _copy(batch)
    x, rows = batch.inputs["image"], _rows(batch, "image")
    b, _, h, w = x.shape
    ph, pw = round(h * math.sqrt(level)), round(w * math.sqrt(level))
    u = _rand((2, b), generator, x)
    top = torch.floor(u[0] * (h - ph + 1)).long()
    left = torch.floor(u[1] * (w - pw + 1)).long()
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + ph)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + pw)
    patch = in_rows[:, :, None] & in_cols[:, None, :] & rows[:, None, None]
    return _with_input(batch, "image", x.masked_fill(patch[:, None], 0.0))


# ----------------------------------------------------------------------------- audio


@CORRUPTIONS.register("audio:white")
def audio_white_noise(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """White noise on the real frames of present audio (batch, frames, features)."""
    level = _check_level(level)
    if _skip(batch, "audio", level):
        return _copy(batch)
    x, real = batch.inputs["audio"], _real(batch, "audio")
    frames = x[real].float()
    if frames.shape[0] == 0:
        return _copy(batch)
    scale = frames.std(dim=0, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(x.dtype)
    noisy = x + _randn(x.shape, generator, x) * (level * scale)
    return _with_input(batch, "audio", torch.where(real[:, :, None], noisy, x))


@CORRUPTIONS.register("audio:dropout")
def audio_frame_dropout(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Zero round(level * n) random real frames of each present sample; padding unchanged."""
    level = _check_level(level)
    if _skip(batch, "audio", level):
        return _copy(batch)
    x = batch.inputs["audio"]
    dropped = _choose(_real(batch, "audio"), level, generator)
    return _with_input(batch, "audio", x.masked_fill(dropped[:, :, None], 0.0))


# ----------------------------------------------------------------------------- text


def _real_tokens(batch: Batch) -> Tensor:
    """(batch, tokens) bool: word tokens of present rows (not padding, PAD, [CLS] or [SEP])."""
    x = batch.inputs["text"]
    special = (x == PAD_ID) | (x == CLS_ID) | (x == SEP_ID)
    return _real(batch, "text") & ~special


@CORRUPTIONS.register("text:unk")
def text_unk(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Replace round(level * n) random word tokens of each present text (batch, tokens) by UNK."""
    level = _check_level(level)
    if _skip(batch, "text", level):
        return _copy(batch)
    x = batch.inputs["text"]
    hit = _choose(_real_tokens(batch), level, generator)
    return _with_input(batch, "text", x.masked_fill(hit, UNK_ID))


@CORRUPTIONS.register("text:drop")
def text_drop(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Remove round(level * n) random word tokens (keeping >= 1), compact, pad, update the mask."""
    level = _check_level(level)
    if _skip(batch, "text", level):
        return _copy(batch)
    x = batch.inputs["text"]
    tokens = _real(batch, "text") & (x != PAD_ID)
    keep = tokens & ~_choose(_real_tokens(batch), level, generator, keep=1)
    rows_present = _rows(batch, "text")
    # Rows without text keep their (all-PAD) content; only present rows are rebuilt.
    out = torch.where(rows_present[:, None], torch.full_like(x, PAD_ID), x)
    b_idx, t_idx = keep.nonzero(as_tuple=True)
    pos = (keep.long().cumsum(dim=1) - 1)[b_idx, t_idx]
    out[b_idx, pos] = x[b_idx, t_idx]
    lengths = keep.sum(dim=1)
    new_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    old_mask = batch.padding.get("text", new_mask)
    padding = torch.where(rows_present[:, None], new_mask, old_mask.to(x.device))
    return _with_input(batch, "text", out, padding)


# ----------------------------------------------------------------------------- missing modality


def drop_modality(batch: Batch, modality: str, level: float, generator: torch.Generator) -> Batch:
    """Mark ``modality`` absent in round(level * n) of the n samples that have it.

    Their rows are reset to padding (zeros / PAD, padding mask False), as collation leaves an
    absent modality. The tensor stays in ``inputs`` even when no sample keeps the modality, so
    a model that loses every modality still runs (every fusion honours the mask: it predicts
    from its biases alone) instead of failing on empty inputs.
    """
    level = _check_level(level)
    if modality not in batch.present:
        raise InputError(f"modality {modality!r} is not in the batch; it has {batch.modalities}")
    if level == 0.0:
        return _copy(batch)
    out = _copy(batch)
    present = batch.present[modality]
    gone = _choose(present[None, :], level, generator)[0]
    out.present[modality] = present & ~gone
    if modality in batch.inputs:
        x = batch.inputs[modality]
        g = gone.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        out.inputs[modality] = x.masked_fill(g, PAD_ID if not x.is_floating_point() else 0)
        if modality in batch.padding:
            out.padding[modality] = batch.padding[modality].masked_fill(gone.to(x.device)[:, None], False)
    return out


def remove_modality(batch: Batch, modality: str) -> Batch:
    """``batch`` with ``modality`` absent from every sample (present[modality] all False)."""
    return drop_modality(batch, modality, 1.0, torch.Generator())


def _missing(modality: str) -> Corruption:
    def fn(batch: Batch, level: float, generator: torch.Generator) -> Batch:
        return drop_modality(batch, modality, level, generator)

    fn.__doc__ = f"Mark {modality} absent in a ``level`` share of the samples that have it."
    return fn


for _m in MODALITIES:
    CORRUPTIONS.register(f"{_m}:missing")(_missing(_m))


# ----------------------------------------------------------------------------- names


def corruptions_for(modality: str) -> list[str]:
    """Corruption names registered for ``modality`` (without the ``modality:`` prefix)."""
    return [key.split(":", 1)[1] for key in CORRUPTIONS if key.split(":", 1)[0] == modality]


def _known() -> str:
    return "; ".join(f"{m}: {', '.join(corruptions_for(m))}" for m in MODALITIES)


def _lookup(modality: str, corruption: str) -> Corruption:
    if modality not in MODALITIES:
        raise InputError(
            f"unknown modality {modality!r}; known: {', '.join(MODALITIES)} (corruptions: {_known()})"
        )
    if corruption not in corruptions_for(modality):
        raise InputError(
            f"unknown {modality} corruption {corruption!r}; known: {', '.join(corruptions_for(modality))}"
        )
    return CORRUPTIONS[f"{modality}:{corruption}"]


def corrupt(
    batch: Batch, modality: str, corruption: str, level: float, generator: torch.Generator
) -> Batch:
    """Apply the registered ``modality:corruption`` at ``level`` to ``batch`` (returns a new batch)."""
    return _lookup(modality, corruption)(batch, level, generator)


def parse_noise_spec(spec: str) -> list[tuple[str, str]]:
    """Parse ``"image:gaussian,audio:white"`` into ``[("image", "gaussian"), ("audio", "white")]``.

    Items are comma-separated ``modality:corruption`` pairs; a bare ``modality`` means every
    corruption registered for it. Duplicates are dropped, order is kept. Raises InputError for
    an empty spec, an unknown modality or an unknown corruption, listing the known ones.
    """
    pairs: list[tuple[str, str]] = []
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise InputError(
            f"noise spec {spec!r}: expected comma-separated modality:corruption items, "
            f"e.g. image:gaussian,audio:white; known: {_known()}"
        )
    for item in items:
        modality, sep, corruption = (part.strip() for part in item.partition(":"))
        names = [corruption] if sep else corruptions_for(modality) or [""]
        for name in names:
            _lookup(modality, name)
            if (modality, name) not in pairs:
                pairs.append((modality, name))
    return pairs


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
    fn = _lookup(modality, corruption)
    curve: Curve = []
    for level in levels:
        level = _check_level(level)
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
        _lookup(modality, corruption)
        if modality not in modalities:
            raise InputError(f"corruption {modality}:{corruption}: the model has no {modality}; it uses {modalities}")
    levels = [_check_level(level) for level in levels]
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
    """Each row gets the next row's ``modality`` (input, padding, presence); the rest stays."""

    def fn(batch: Batch) -> Batch:
        out = _copy(batch)
        for part in (out.inputs, out.padding, out.present):
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
