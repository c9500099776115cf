"""Two classifiers on the same evaluation rows: is the accuracy gap larger than the test set
can tell?

A results table compares means over seeds; on a test split of a few hundred rows a gap of a
point is one to three rows. Scoring both models on the same rows makes the comparison paired:
what varies is only which rows each gets right. :func:`paired_accuracy` resamples the rows
(bootstrap, the seeds of each model kept together) and reports the gap with a percentile
interval, plus the rows only one of the two gets right. Rows that are not independent -- variants
of one picture, clips of one speaker -- are resampled together when their ``groups`` are given
(a cluster bootstrap): near-duplicates tend to be right or wrong together, and resampling them
one by one would make the interval too narrow.

    a = correct_rows(logits_a, labels)          # (seeds, rows) bool, or (rows,) for one run
    b = correct_rows(probe_logits, labels)
    gap = paired_accuracy(a, b)                 # gap.delta, gap.low, gap.high (fractions)

When the test split is too small to tell, more rows come from other splits of the same data:
:func:`gap_over_splits` takes the two models' accuracies on several independent re-splits
(each a fresh train/valid/test partition) and reports the mean gap with a Student-t interval
over splits and a sign test of how often the first model is ahead.

    over = gap_over_splits([0.82, 0.86, ...], [0.80, 0.85, ...])   # over.mean, over.low, ...
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from mmfurnace.errors import InputError
from mmfurnace.models.predict import predicted_labels


@dataclass(frozen=True)
class PairedGap:
    """accuracy(a) - accuracy(b) on the same rows, each averaged over its runs.

    delta, low, high: the gap and its ``level`` bootstrap percentile interval (fractions);
    only_a / only_b: rows only a (only b) gets right, mean over the runs; rows; resamples;
    groups: how many groups were resampled (None: rows one by one)."""

    delta: float
    low: float
    high: float
    level: float
    only_a: float
    only_b: float
    rows: int
    resamples: int
    groups: int | None = None

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
    a: Tensor,
    b: Tensor,
    *,
    groups: Sequence[Hashable] | None = None,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedGap:
    """Bootstrap over rows of mean-over-runs accuracy(a) - accuracy(b).

    a, b: (runs, rows) or (rows,) bool correctness of two models on the same rows in the same
    order (runs: seeds of one model; a deterministic model has one). Each resample draws the
    rows with replacement, the same rows for every run of both models; the interval is the
    resamples' (1 - level) / 2 and (1 + level) / 2 quantiles. Deterministic for a ``seed``.
    groups: one key per row; each resample then draws whole groups with replacement and the
    statistic is the gap over the rows drawn (with every group a single row: the same draws
    and interval as without)."""
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
    sums, sizes = per_row, None  # per group: summed gap and rows (None: each row alone)
    if groups is not None:
        if len(groups) != rows:
            raise InputError(f"paired comparison: {len(groups)} group keys for {rows} rows")
        index: dict[Hashable, int] = {}
        ids = torch.tensor([index.setdefault(key, len(index)) for key in groups])
        sums = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids, per_row)
        sizes = torch.bincount(ids, minlength=len(index)).double()
    units = sums.shape[0]
    g = torch.Generator().manual_seed(seed)
    # resamples drawn in chunks of ~2 M indices: all at once would hold resamples x units
    # int64s (800 MB for a 10,000-row test split)
    chunk = max(1, 2_000_000 // units)
    draws = (torch.randint(0, units, (min(chunk, resamples - i), units), generator=g)
             for i in range(0, resamples, chunk))
    boot = torch.cat([sums[d].mean(1) if sizes is None else sums[d].sum(1) / sizes[d].sum(1)
                      for d in draws])
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(boot, tails).tolist()
    only_a = (a2.unsqueeze(1) & ~b2.unsqueeze(0)).double().sum(-1).mean()
    only_b = (b2.unsqueeze(0) & ~a2.unsqueeze(1)).double().sum(-1).mean()
    return PairedGap(float(per_row.mean()), float(low), float(high), level, float(only_a),
                     float(only_b), rows, resamples, None if groups is None else units)


@dataclass(frozen=True)
class SplitsGap:
    """accuracy(a) - accuracy(b) over independent re-splits of one dataset.

    mean, sd: the gap's mean and sample standard deviation over splits; low, high: the
    ``level`` Student-t interval of the mean (None with one split); wins / losses / ties:
    splits where a is ahead / behind / level; sign_p: two-sided exact sign test of wins
    against losses (ties dropped; 1.0 when every split ties)."""

    mean: float
    sd: float | None
    low: float | None
    high: float | None
    level: float
    splits: int
    wins: int
    losses: int
    ties: int
    sign_p: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def gap_over_splits(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> SplitsGap:
    """Gap between two models' accuracies on the same re-splits (``a[i]``, ``b[i]``: split
    i's test accuracy of each, a model's mean over its seeds). Splits are independent draws
    of the partition, so their gaps are treated as i.i.d.: t interval, exact sign test."""
    from scipy import stats

    if len(a) != len(b) or not a:
        raise InputError(f"gap over splits needs one accuracy per split for both models: "
                         f"{len(a)} and {len(b)}")
    if not 0 < level < 1:
        raise InputError(f"gap over splits: level {level} must be in (0, 1)")
    gaps = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(gaps)
    mean = math.fsum(gaps) / n
    sd = low = high = None
    if n > 1:
        sd = math.sqrt(math.fsum((g - mean) ** 2 for g in gaps) / (n - 1))
        half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    # accuracies come as float32 shares: a gap under 1e-6 is the same accuracy rounded twice
    wins = sum(g > 1e-6 for g in gaps)
    losses = sum(g < -1e-6 for g in gaps)
    decided = wins + losses
    sign_p = 1.0 if decided == 0 else float(
        stats.binomtest(wins, decided, 0.5, alternative="two-sided").pvalue)
    return SplitsGap(mean, sd, low, high, level, n, wins, losses, n - decided, sign_p)
