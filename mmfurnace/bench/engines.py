"""The old import path of the runtime benchmark (:mod:`mmfurnace.bench.runtimes`), whose
functions were named after "engines"; kept for code written against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmfurnace.bench.runtime_report import (
    REFERENCE,
    best_cpu_vs_eager,
    flat_metrics,
    format_machine,
    format_table,
    plot_runtimes,
    print_table,
    throughput,
)
from mmfurnace.bench.runtimes import bench_runtimes

plot_engines = plot_runtimes

__all__ = ["REFERENCE", "bench_engines", "best_cpu_vs_eager", "flat_metrics", "format_machine", "format_table",
           "plot_engines", "print_table", "throughput"]


def bench_engines(*args: Any, backends: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`~mmfurnace.bench.runtimes.bench_runtimes`, ``backends`` being its ``runtimes``."""
    return bench_runtimes(*args, runtimes=backends, **kwargs)
