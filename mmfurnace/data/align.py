"""Align time-stamped streams (video frames, audio windows, sensor readings) to one clock.

Every stream is ``(timestamps (n,), values (n, ...))`` with timestamps in seconds,
sorted ascending. Alignment returns values on the clock ``(m, ...)`` and a ``(m,)``
bool mask of the ticks that got data; invalid ticks hold zeros.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mmfurnace.errors import InputError


def make_clock(start: float, end: float, rate: float) -> Tensor:
    """Ticks ``start + k / rate`` in [start, end): (steps,) float64."""
    if not (rate > 0 and end > start):
        raise InputError(f"clock needs rate > 0 and end > start, got {start=}, {end=}, {rate=}")
    # Small slack so [0, 1) at 10 Hz has 10 ticks despite (end - start) * rate = 9.999...
    steps = int(torch.tensor((end - start) * rate - 1e-9, dtype=torch.float64).ceil())
    # start + k / rate rather than a running sum, so error does not accumulate.
    return start + torch.arange(steps, dtype=torch.float64) / rate


def align_nearest(
    timestamps: Tensor, values: Tensor, clock: Tensor, *, tolerance: float | None = None
) -> tuple[Tensor, Tensor]:
    """Each tick takes the nearest sample (ties: the earlier one).

    timestamps (n,), values (n, ...), clock (m,) -> (aligned (m, ...), valid (m,) bool).
    A tick farther than ``tolerance`` seconds from every sample is invalid (zeros).
    """
    ts, ticks = _check_stream(timestamps, values, clock)
    eps = _epsilon(timestamps, clock, ts, ticks)
    right = torch.searchsorted(ts, ticks).clamp(max=ts.numel() - 1)
    left = (right - 1).clamp(min=0)
    d_left = (ticks - ts[left]).abs()
    d_right = (ts[right] - ticks).abs()
    # Equal distances, up to float error (0.1 - 0.08 vs 0.12 - 0.1), go to the earlier sample.
    index = torch.where(d_left <= d_right + eps, left, right)
    distance = torch.minimum(d_left, d_right)
    valid = torch.ones_like(ticks, dtype=torch.bool)
    if tolerance is not None:
        if tolerance < 0:
            raise InputError(f"tolerance must be >= 0, got {tolerance}")
        valid = distance <= tolerance + eps
    aligned = values[index.to(values.device)]
    return _zero_invalid(aligned, valid.to(values.device)), valid.to(values.device)


def _pool_mean(window: Tensor, inside: Tensor) -> Tensor:
    """(m, k, ...) samples, (m, k) membership -> (m, ...) mean over members."""
    data = window if window.is_floating_point() else window.to(torch.float32)
    mask = _expand(inside, data)
    total = torch.where(mask, data, torch.zeros((), dtype=data.dtype, device=data.device)).sum(1)
    count = _expand(inside.sum(1).clamp(min=1), total)
    return total / count


def _pool_max(window: Tensor, inside: Tensor) -> Tensor:
    low = (
        torch.finfo(window.dtype).min
        if window.is_floating_point()
        else torch.iinfo(window.dtype).min
    )
    fill = torch.full((), low, dtype=window.dtype, device=window.device)
    return torch.where(_expand(inside, window), window, fill).amax(1)


REDUCERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mean": _pool_mean, "max": _pool_max}


def align_window(
    timestamps: Tensor, values: Tensor, clock: Tensor, *, window: float, reduce: str = "mean"
) -> tuple[Tensor, Tensor]:
    """Pool every sample with |t - tick| <= window / 2 (both ends inclusive).

    timestamps (n,), values (n, ...), clock (m,) -> (pooled (m, ...), valid (m,) bool).
    ``reduce`` is "mean" (integer values become float32) or "max". A tick with no
    sample in its window is invalid (zeros).
    """
    if reduce not in REDUCERS:
        raise InputError(f"unknown reduce {reduce!r}; known: {', '.join(sorted(REDUCERS))}")
    if not window > 0:
        raise InputError(f"window must be > 0 seconds, got {window}")
    ts, ticks = _check_stream(timestamps, values, clock)
    eps = _epsilon(timestamps, clock, ts, ticks)
    lo = torch.searchsorted(ts, ticks - window / 2 - eps, side="left")
    hi = torch.searchsorted(ts, ticks + window / 2 + eps, side="right")
    count = hi - lo
    # Gather a fixed-width (m, widest) block of candidate indices and mask the extras:
    # memory is m * widest, not m * n as a dense membership matrix would be.
    widest = max(int(count.max()) if count.numel() else 0, 1)
    offsets = torch.arange(widest, dtype=lo.dtype)
    index = lo[:, None] + offsets[None, :]
    inside = offsets[None, :] < count[:, None]
    index = index.clamp(max=ts.numel() - 1).to(values.device)
    inside = inside.to(values.device)
    pooled = REDUCERS[reduce](values[index], inside)
    valid = (count > 0).to(values.device)
    return _zero_invalid(pooled, valid), valid


def _align_nearest_stream(
    ts: Tensor, vals: Tensor, clock: Tensor, window: float | None, tolerance: float | None
) -> tuple[Tensor, Tensor]:
    return align_nearest(ts, vals, clock, tolerance=tolerance)


def _align_window_stream(
    ts: Tensor, vals: Tensor, clock: Tensor, window: float | None, tolerance: float | None
) -> tuple[Tensor, Tensor]:
    if window is None:
        raise InputError('method "window" needs window=<seconds>')
    return align_window(ts, vals, clock, window=window)


METHODS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "nearest": _align_nearest_stream,
    "window": _align_window_stream,
}


def align_streams(
    streams: dict[str, tuple[Tensor, Tensor]],
    clock: Tensor,
    *,
    method: str = "nearest",
    window: float | None = None,
    tolerance: float | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Align every named stream to ``clock`` (m,).

    streams: name -> (timestamps (n,), values (n, ...)). Returns (name -> (m, ...)
    values, name -> (m,) bool valid), keys sorted. ``method`` is "nearest" (with an
    optional ``tolerance``) or "window" (mean over ``window`` seconds).
    """
    if method not in METHODS:
        raise InputError(
            f"unknown alignment method {method!r}; known: {', '.join(sorted(METHODS))}"
        )
    aligned: dict[str, Tensor] = {}
    valid: dict[str, Tensor] = {}
    for name in sorted(streams):
        timestamps, values = streams[name]
        try:
            aligned[name], valid[name] = METHODS[method](
                timestamps, values, clock, window, tolerance
            )
        except InputError as exc:
            raise InputError(f"stream {name!r}: {exc}") from exc
    return aligned, valid


def _check_stream(timestamps: Tensor, values: Tensor, clock: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return (timestamps, clock) as float64 on the CPU."""
    if timestamps.dim() != 1 or clock.dim() != 1:
        raise InputError(
            f"timestamps and clock must be 1-D, got shapes {tuple(timestamps.shape)} and "
            f"{tuple(clock.shape)}"
        )
    if timestamps.numel() == 0:
        raise InputError("stream is empty (no timestamps)")
    if values.dim() == 0 or values.shape[0] != timestamps.shape[0]:
        raise InputError(
            f"{timestamps.shape[0]} timestamps but values of shape {tuple(values.shape)}; "
            "the first axis must match"
        )
    ts = timestamps.detach().to("cpu", torch.float64)
    ticks = clock.detach().to("cpu", torch.float64)
    if not (bool(torch.isfinite(ts).all()) and bool(torch.isfinite(ticks).all())):
        raise InputError("timestamps and clock must be finite")
    backwards = torch.nonzero(ts[1:] < ts[:-1])
    if backwards.numel():
        i = int(backwards[0])
        raise InputError(
            f"timestamps are not sorted: t[{i + 1}]={float(ts[i + 1]):g} < t[{i}]={float(ts[i]):g}"
        )
    return ts, ticks


def _epsilon(timestamps: Tensor, clock: Tensor, ts: Tensor, ticks: Tensor) -> float:
    # Absorbs rounding in the inputs (k / 25 vs k / 10, float32 timestamps) without letting
    # real gaps through: a few ulps of the coarser input dtype at the largest magnitude, so
    # Unix-epoch timestamps still compare sensibly.
    ulp = max(_ulp(timestamps), _ulp(clock))
    scale = max(float(ts.abs().max()), float(ticks.abs().max()) if ticks.numel() else 0.0, 1.0)
    return max(1e-9, 8 * ulp * scale)


def _ulp(t: Tensor) -> float:
    return torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(*mask.shape, *([1] * (like.dim() - mask.dim())))


def _zero_invalid(values: Tensor, valid: Tensor) -> Tensor:
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(_expand(valid, values), values, zero)
