"""Corruptions: Batch -> Batch transforms that damage or remove a modality, for robustness.

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
                     The valid mask is unchanged: a dropped frame is still a time step (as a
                     lost packet is), and padded frames stay zero and masked.
    text:unk         replace round(level * n) of each sample's n word tokens by [UNK] (id 1).
    text:drop        remove round(level * n) word tokens, shift the rest left, pad the tail with
                     PAD (id 0) and shrink the valid mask; at least one word token is kept.
                     Word tokens are the real ones other than PAD, [CLS] and [SEP] (the ids of
                     mmfurnace's tokenizer), which both text corruptions leave in place.
    <m>:missing      mark modality m absent (present[m] = False, its rows reset to padding) in
                     round(level * n) of the n samples that have it; level 1 removes it
                     (:func:`remove_modality`).

How robust a model is to them is measured in :mod:`mmfurnace.train.robustness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmfurnace.data.batch import PAD_ID, Batch
from mmfurnace.data.text import CLS_ID, SEP_ID, SPECIAL_TOKENS
from mmfurnace.errors import InputError
from mmfurnace.modalities import MODALITIES
from mmfurnace.registry import Registry

UNK_ID = SPECIAL_TOKENS.index("[UNK]")


Corruption = Callable[[Batch, float, torch.Generator], Batch]
CORRUPTIONS: Registry[Corruption] = Registry("corruption")


# ----------------------------------------------------------------------------- helpers


def check_level(level: float) -> float:
    """``level`` as a float; InputError unless it lies in [0, 1]."""
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise InputError(f"corruption level must be in [0, 1], got {level}")
    return level


def copy_batch(batch: Batch) -> Batch:
    """A new Batch holding the same tensors in new dicts, so a transform can replace entries."""
    return Batch(dict(batch.inputs), dict(batch.valid), dict(batch.present), batch.labels)


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
    mask = batch.valid.get(modality)
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.to(x.device) & _rows(batch, modality)[:, None]


def _with_input(batch: Batch, modality: str, value: Tensor, valid: Tensor | None = None) -> Batch:
    out = copy_batch(batch)
    out.inputs[modality] = value
    if valid is not None:
        out.valid[modality] = valid
    return out


def _skip(batch: Batch, modality: str, level: float) -> bool:
    return level == 0.0 or modality not in batch.inputs


# ----------------------------------------------------------------------------- image


@CORRUPTIONS.register("image:gaussian")
def image_gaussian_noise(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Gaussian noise on present images (batch, channels, height, width); see module doc."""
    level = check_level(level)
    if _skip(batch, "image", level):
        return copy_batch(batch)
    x, rows = batch.inputs["image"], _rows(batch, "image")
    scale = x[rows].float().std(correction=0) if bool(rows.any()) else x.new_tensor(1.0)
    scale = scale if float(scale) > 0 else x.new_tensor(1.0)
    noisy = x + _randn(x.shape, generator, x) * (level * scale).to(x.dtype)
    return _with_input(batch, "image", torch.where(rows[:, None, None, None], noisy, x))


@CORRUPTIONS.register("image:blur")
def image_blur(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Gaussian blur of present images, sigma = level * min(H, W) / 8; deterministic."""
    level = check_level(level)
    if _skip(batch, "image", level):
        return copy_batch(batch)
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
    level = check_level(level)
    if _skip(batch, "image", level):
        return copy_batch(batch)
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
    level = check_level(level)
    if _skip(batch, "audio", level):
        return copy_batch(batch)
    x, real = batch.inputs["audio"], _real(batch, "audio")
    frames = x[real].float()
    if frames.shape[0] == 0:
        return copy_batch(batch)
    scale = frames.std(dim=0, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(x.dtype)
    noisy = x + _randn(x.shape, generator, x) * (level * scale)
    return _with_input(batch, "audio", torch.where(real[:, :, None], noisy, x))


@CORRUPTIONS.register("audio:dropout")
def audio_frame_dropout(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Zero round(level * n) random real frames of each present sample; valid mask unchanged."""
    level = check_level(level)
    if _skip(batch, "audio", level):
        return copy_batch(batch)
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
    level = check_level(level)
    if _skip(batch, "text", level):
        return copy_batch(batch)
    x = batch.inputs["text"]
    hit = _choose(_real_tokens(batch), level, generator)
    return _with_input(batch, "text", x.masked_fill(hit, UNK_ID))


@CORRUPTIONS.register("text:drop")
def text_drop(batch: Batch, level: float, generator: torch.Generator) -> Batch:
    """Remove round(level * n) random word tokens (keeping >= 1), compact, pad, update the mask."""
    level = check_level(level)
    if _skip(batch, "text", level):
        return copy_batch(batch)
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
    old_mask = batch.valid.get("text", new_mask)
    valid = torch.where(rows_present[:, None], new_mask, old_mask.to(x.device))
    return _with_input(batch, "text", out, valid)


# ----------------------------------------------------------------------------- missing modality


def drop_modality(batch: Batch, modality: str, level: float, generator: torch.Generator) -> Batch:
    """Mark ``modality`` absent in round(level * n) of the n samples that have it.

    Their rows are reset to padding (zeros / PAD, valid mask False), as collation leaves an
    absent modality. The tensor stays in ``inputs`` even when no sample keeps the modality, so
    a model that loses every modality still runs (every fusion honours the mask: it predicts
    from its biases alone) instead of failing on empty inputs.
    """
    level = check_level(level)
    if modality not in batch.present:
        raise InputError(f"modality {modality!r} is not in the batch; it has {batch.modalities}")
    if level == 0.0:
        return copy_batch(batch)
    out = copy_batch(batch)
    present = batch.present[modality]
    gone = _choose(present[None, :], level, generator)[0]
    out.present[modality] = present & ~gone
    if modality in batch.inputs:
        x = batch.inputs[modality]
        g = gone.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        out.inputs[modality] = x.masked_fill(g, PAD_ID if not x.is_floating_point() else 0)
        if modality in batch.valid:
            out.valid[modality] = batch.valid[modality].masked_fill(gone.to(x.device)[:, None], False)
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


def lookup_corruption(modality: str, corruption: str) -> Corruption:
    """The registered ``modality:corruption``; InputError listing the known ones otherwise."""
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
    return lookup_corruption(modality, corruption)(batch, level, generator)


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
            lookup_corruption(modality, name)
            if (modality, name) not in pairs:
                pairs.append((modality, name))
    return pairs
