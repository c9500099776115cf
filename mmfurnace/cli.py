"""The `mmfurnace` command line: thin wrappers over the packages.

Imports happen inside commands so `mmfurnace --help` stays fast and optional backends load
only when used. Errors mmfurnace raises on purpose are printed as one clear line (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmfurnace.errors import MMFurnaceError

app = typer.Typer(
    help="Train, compress, export and serve multimodal (image + audio + text) classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build, inspect and verify datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Overrides = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Argument(help="Dotted overrides, e.g. model.fusion=late train.epochs=3"),
]


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@data_app.command("build")
def data_build(
    name: Annotated[str, typer.Argument(help="Built-in dataset to build: digits-av")] = "digits-av",
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into")] = Path("data/digits-av"),
    seed: Annotated[int, typer.Option(help="Seed for pairing, noise and splits")] = 0,
    config: Annotated[Optional[Path], typer.Option(help="Run config whose data section sets preprocessing")] = None,  # noqa: UP045
    force: Annotated[bool, typer.Option(help="Rebuild even if the dataset exists")] = False,
) -> None:
    """Build a built-in dataset offline: raw files + manifest, then the packed cache."""
    from mmfurnace.config import load_run_config
    from mmfurnace.data.prepare import build_builtin

    try:
        cfg = load_run_config(config).data
        root = build_builtin(name, out, data_cfg=cfg, seed=seed, force=force)
    except MMFurnaceError as err:
        _fail(err)
    typer.echo(f"dataset ready: {root}")


@data_app.command("inspect")
def data_inspect(root: Annotated[Path, typer.Argument(help="Packed dataset folder")]) -> None:
    """Print a summary of a packed dataset: modalities, shapes, split sizes, class balance."""
    from mmfurnace.data.prepare import print_summary

    try:
        print_summary(root)
    except MMFurnaceError as err:
        _fail(err)


@data_app.command("verify")
def data_verify(root: Annotated[Path, typer.Argument(help="Packed dataset folder")]) -> None:
    """Check a packed dataset for consistency (offsets, labels, NaN); exit non-zero if broken."""
    from mmfurnace.data.cache import verify_packed
    from mmfurnace.data.prepare import packed_root

    try:
        summary = verify_packed(packed_root(root))
    except MMFurnaceError as err:
        _fail(err)
    typer.echo(f"ok: {summary}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
