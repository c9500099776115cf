"""Two classifiers on the same evaluation rows: is the accuracy gap larger than the test set
can tell?

A results table compares means over seeds; on a test split of a few hundred rows a gap of a
point is one to three rows. Scoring both models on the same rows makes the comparison paired:
what varies is only which rows each gets right. :func:`paired_accuracy` resamples the rows
(bootstrap, the seeds of each model kept together) and reports the gap with a percentile
interval, plus the rows only one of the two gets right.

    a = correct_rows(logits_a, labels)          # (seeds, rows) bool, or (rows,) for one run
    b = correct_rows(probe_logits, labels)
    gap = paired_accuracy(a, b)                 # gap.delta, gap.low, gap.high (fractions)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from mmfurnace.errors import InputError
from mmfurnace.models.predict import predicted_labels


@dataclass(frozen=True)
class PairedGap:
    """accuracy(a) - accuracy(b) on the same rows, each averaged over its runs.

    delta, low, high: the gap and its ``level`` bootstrap percentile interval (fractions);
    only_a / only_b: rows only a (only b) gets right, mean over the runs; rows; resamples."""

    delta: float
    low: float
    high: float
    level: float
    only_a: float
    only_b: float
    rows: int
    resamples: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def correct_rows(logits: Tensor, labels: Tensor, *, multilabel: bool = False) -> Tensor:
    """(…, rows) bool: whether each row's prediction is right (multi-label: every label);
    ``logits`` (…, rows, classes), ``labels`` (rows,) or (rows, classes)."""
    pred = predicted_labels(logits, multilabel=multilabel)
    if multilabel:
        return (pred.bool() == labels.bool()).all(-1)
    return pred == labels.long()


def paired_accuracy(
    a: Tensor, b: Tensor, *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> PairedGap:
    """Bootstrap over rows of mean-over-runs accuracy(a) - accuracy(b).

    a, b: (runs, rows) or (rows,) bool correctness of two models on the same rows in the same
    order (runs: seeds of one model; a deterministic model has one). Each resample draws the
    rows with replacement, the same rows for every run of both models; the interval is the
    resamples' (1 - level) / 2 and (1 + level) / 2 quantiles. Deterministic for a ``seed``."""
    a2, b2 = (x.reshape(1, -1) if x.dim() == 1 else x for x in (a, b))
    if a2.dim() != 2 or b2.dim() != 2 or a2.shape[1] != b2.shape[1]:
        raise InputError(f"paired comparison needs the same rows for both models: shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    rows = a2.shape[1]
    if rows == 0 or a2.shape[0] == 0 or b2.shape[0] == 0:
        raise InputError("paired comparison of models with no evaluation rows")
    if not 0 < level < 1 or resamples < 1:
        raise InputError(f"paired comparison: level {level} must be in (0, 1) and resamples "
                         f"{resamples} at least 1")
    # per-row gap of the run means: the statistic is its mean over rows
    per_row = a2.double().mean(0) - b2.double().mean(0)
    g = torch.Generator().manual_seed(seed)
    # resamples drawn in chunks of ~2 M indices: all at once would hold resamples x rows
    # int64s (800 MB for a 10,000-row test split)
    chunk = max(1, 2_000_000 // rows)
    boot = torch.cat([per_row[torch.randint(0, rows, (min(chunk, resamples - i), rows), generator=g)].mean(1)
                      for i in range(0, resamples, chunk)])
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(boot, tails).tolist()
    only_a = (a2.unsqueeze(1) & ~b2.unsqueeze(0)).double().sum(-1).mean()
    only_b = (b2.unsqueeze(0) & ~a2.unsqueeze(1)).double().sum(-1).mean()
    return PairedGap(float(per_row.mean()), float(low), float(high), level, float(only_a),
                     float(only_b), rows, resamples)
