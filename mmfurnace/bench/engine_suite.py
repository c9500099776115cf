"""The old import path of :mod:`mmfurnace.bench.runtime_suite`; kept for code written against it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmfurnace.bench.runtime_suite import (
    default_info,
    default_lengths,
    fresh_export,
    run_runtime_bench,
)

__all__ = ["default_info", "default_lengths", "fresh_export", "run_engine_bench"]


def run_engine_bench(source: Path | None, *, backends: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`~mmfurnace.bench.runtime_suite.run_runtime_bench`, ``backends`` being its ``runtimes``."""
    return run_runtime_bench(source, runtimes=backends, **kwargs)
