"""The one command line of the training recipe, behind both ``mmfurnace train`` and
``python -m mmfurnace.train`` (which torchrun runs on every rank):

    mmfurnace train [config.yaml] [key.path=value ...] [--resume] [--no-progress]
    torchrun --nproc_per_node 2 -m mmfurnace.train config.yaml ...

Errors a user can fix (config, input) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mmfurnace.errors import MMFurnaceError


def run_training(config: str | Path | None, overrides: Sequence[str], *, resume: bool = False,
                 progress: bool = True) -> int:
    """Load and validate the config, run :func:`~mmfurnace.train.recipe.train`, and print (on
    rank 0) where the run went and its best validation and test metrics. Returns the exit
    status: 0, or 2 after printing a user error."""
    from mmfurnace.config import load_run_config
    from mmfurnace.train.distributed import read_env
    from mmfurnace.train.recipe import train

    overrides = list(overrides)
    if config is not None and "=" in str(config) and not Path(config).exists():
        config, overrides = None, [str(config), *overrides]  # only overrides were given
    try:
        result = train(load_run_config(config, overrides), resume=resume, progress=progress)
    except MMFurnaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if read_env().is_main:
        print(f"done: {result.out_dir} (best epoch {result.best_metrics.get('epoch')}: "
              f"{_short(result.best_metrics)})  test: {_short(result.test_metrics)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmfurnace.train``: parse ``argv`` and run :func:`run_training`."""
    parser = argparse.ArgumentParser(
        prog="python -m mmfurnace.train",
        description="Train a multimodal classifier (works under torchrun too).",
    )
    parser.add_argument("config", nargs="?", help="YAML run config (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/last")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return run_training(args.config, args.overrides, resume=args.resume, progress=not args.no_progress)


def _short(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    keys = ("accuracy", "macro_f1", "micro_f1")
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), float))
