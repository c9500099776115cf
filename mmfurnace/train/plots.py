"""PNG plots for ablation and robustness reports.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly,
never through ``pyplot``: no backend is switched, no global figure list grows, and nothing
leaks out of these functions. matplotlib is imported inside them so ``import mmfurnace.train``
stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Series = tuple[Sequence[float], Sequence[float]]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def bar_with_errors(
    names: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    path: Path,
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """Bar chart of ``means`` per name with ``stds`` as error bars; NaN bars are left empty.

    Returns the PNG path.
    """
    assert len(names) == len(means) == len(stds)
    width = max(4.0, 0.9 * len(names) + 2.0)
    fig = _figure(width, 4.2)
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    heights = [0.0 if math.isnan(m) else m for m in means]
    errs = [0.0 if math.isnan(s) else s for s in stds]
    ax.bar(xs, heights, yerr=errs, capsize=4, color="#4C78A8", edgecolor="black", linewidth=0.5)
    for x, m in zip(xs, means, strict=True):
        label = "failed" if math.isnan(m) else f"{m:.3f}"
        ax.annotate(label, (x, 0 if math.isnan(m) else m), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                       fontsize=7)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def line_curves(
    series: Mapping[str, Series],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    integer_x: bool = False,
) -> Path:
    """One line (with markers) per entry of ``series`` (label -> (xs, ys)). Returns the PNG path.

    ``integer_x`` puts ticks on whole numbers only (epochs).
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    _draw_lines(ax, series)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def curve_grid(
    panels: Mapping[str, Mapping[str, Series]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """A grid of line plots: one panel per key of ``panels`` (panel title -> label -> (xs, ys)).

    ``ylim`` fixes every panel's y range (e.g. (0, 1) for accuracies). Returns the PNG path.
    """
    n = max(len(panels), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.4 * rows)
    for i, (name, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_lines(ax, series)
        ax.set_title(name, fontsize=9)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _draw_lines(ax: Any, series: Mapping[str, Series]) -> None:
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
