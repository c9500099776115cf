"""Command line of the training recipe (also under torchrun):

    python -m mmfurnace.train [config.yaml] [key.path=value ...] [--resume] [--no-progress]
    torchrun --nproc_per_node 2 -m mmfurnace.train.recipe config.yaml ...

Errors a user can fix (config, input) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmfurnace.errors import MMFurnaceError


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, load and validate the config, run :func:`~mmfurnace.train.recipe.train`."""
    from mmfurnace.config import load_run_config
    from mmfurnace.train.distributed import read_env
    from mmfurnace.train.recipe import train

    parser = argparse.ArgumentParser(
        prog="python -m mmfurnace.train",
        description="Train a multimodal classifier (works under torchrun too).",
    )
    parser.add_argument("config", nargs="?", help="YAML run config (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/last")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]  # only overrides were given
    try:
        cfg = load_run_config(config, overrides)
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except MMFurnaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if read_env().is_main:
        best = ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items() if isinstance(v, float))
        print(f"done: {result.out_dir} (best epoch {result.best_metrics.get('epoch')}: {best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
