"""The `mmfurnace` command line: thin wrappers over the packages.

Imports happen inside commands so `mmfurnace --help` stays fast and optional runtimes load
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
    name: Annotated[str, typer.Argument(help="Built-in dataset to build: digits-av, fsdd-mnist, tuxpaint")] = "digits-av",
    out: Annotated[Optional[Path], typer.Option(help="Folder to write the dataset into (default: data/NAME)")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Seed for pairing, noise and splits")] = 0,
    config: Annotated[Optional[Path], typer.Option(help="Run config whose data section sets preprocessing")] = None,  # noqa: UP045
    force: Annotated[bool, typer.Option(help="Rebuild even if the dataset exists")] = False,
    option: Annotated[Optional[list[str]], typer.Option("-o", "--option", help="Dataset build option key=value, e.g. -o snr_db=5 -o speech_language=es (see docs/NAME.md)")] = None,  # noqa: UP045
    fsdd: Annotated[Optional[Path], typer.Option(help="fsdd-mnist: the FSDD folder (with recordings/)")] = None,  # noqa: UP045
    holdout_speaker: Annotated[Optional[str], typer.Option(help="fsdd-mnist: keep this speaker out of train/valid; test = only their clips")] = None,  # noqa: UP045
    limit_per_class: Annotated[Optional[int], typer.Option(help="Only the first N items per class (a quick small build)")] = None,  # noqa: UP045
) -> None:
    """Build a built-in dataset offline: raw files + manifest, then the packed cache."""
    from mmfurnace.config import load_run_config
    from mmfurnace.data.prepare import build_builtin, print_build_summary
    from mmfurnace.typed_config import apply_overrides

    try:
        cfg = load_run_config(config).data
        options = apply_overrides({}, option or [])
        options.update({k: v for k, v in (("fsdd", fsdd), ("holdout_speaker", holdout_speaker))
                        if v is not None})  # fmt: skip
        root = build_builtin(name, out or Path("data") / name, data_cfg=cfg, seed=seed,
                             force=force, limit_per_class=limit_per_class, options=options)  # fmt: skip
        print_build_summary(root)
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


@app.command("train")
def train_cmd(
    config: Annotated[Optional[Path], typer.Argument(help="YAML run config")] = None,  # noqa: UP045
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="Continue exactly from <train.out_dir>/last")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Train a model (under torchrun: `torchrun --nproc_per_node N -m mmfurnace.train CONFIG ...`)."""
    from mmfurnace.train.command import run_training

    raise typer.Exit(run_training(config, overrides or [], resume=resume, progress=progress))


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (a run's best/ or last/)")],
    split: Annotated[str, typer.Option(help="Split to evaluate")] = "test",
    noise: Annotated[Optional[str], typer.Option(help="Robustness: 'image:gaussian,audio:white', 'text' or 'all'")] = None,  # noqa: UP045
    levels: Annotated[str, typer.Option(help="Noise levels in [0, 1], comma-separated")] = "0,0.2,0.4,0.6,0.8,1.0",
    out: Annotated[Optional[Path], typer.Option(help="Folder for the robustness report")] = None,  # noqa: UP045
    overrides: Overrides = None,
) -> None:
    """Evaluate a checkpoint; with --noise, per-modality robustness curves and their AUC."""
    import json

    from mmfurnace.train.checkpoint_eval import evaluate_checkpoint

    try:
        level_values = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        _fail(MMFurnaceError(f"--levels {levels!r}: expected comma-separated numbers in [0, 1]"))
    try:
        result = evaluate_checkpoint(
            checkpoint, split=split, noise=noise, levels=level_values, out_dir=out,
            overrides=overrides or [],
        )
    except MMFurnaceError as err:
        _fail(err)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command("ablate")
def ablate_cmd(
    config: Annotated[Path, typer.Argument(help="Base YAML run config")],
    grid: Annotated[list[str], typer.Option("--grid", help="key=V1,V2 (repeat per key); list values separated by |")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds")] = "0,1,2",
    out: Annotated[Path, typer.Option(help="Folder for runs, table and plots")] = Path("runs/ablation"),
    resume: Annotated[bool, typer.Option(help="Reuse finished runs, continue interrupted ones")] = False,
) -> None:
    """Train a grid of variants (fusion x alpha/beta x modality subset), write table and plots."""
    from mmfurnace.train.ablation import expand_grid, parse_grid, run_ablation

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        result = run_ablation(config, expand_grid(parse_grid(grid)), seeds=seed_list, out_dir=out, resume=resume)
    except ValueError as err:
        _fail(err)
    except MMFurnaceError as err:
        _fail(err)
    typer.echo(f"table: {result.out_dir / 'results.md'}")


@app.command("demo")
def demo_cmd(
    dataset: Annotated[str, typer.Option(help="tuxpaint (real data, frozen pretrained encoders) or digits-av (small encoders from scratch, fast)")] = "tuxpaint",
    report: Annotated[Path, typer.Option(help="Report folder")] = Path("report"),
    data_root: Annotated[Optional[Path], typer.Option(help="Where the dataset lives (default: data/tuxpaint-224 or data/digits-av)")] = None,  # noqa: UP045
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of each unimodal run (default: 10 tuxpaint, 12 digits-av)")] = None,  # noqa: UP045
    fusion_epochs: Annotated[Optional[int], typer.Option(help="Epochs of each fusion run (default: 10 tuxpaint, 5 digits-av (warm-started))")] = None,  # noqa: UP045
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds for the fusion table (default: 0 on tuxpaint, 0,1,2 on digits-av)")] = None,  # noqa: UP045
    skip: Annotated[Optional[list[str]], typer.Option(help="Steps to skip (repeatable)")] = None,  # noqa: UP045
) -> None:
    """Run the whole job on a built-in dataset: data, feature cache (pretrained encoders), fusion
    table, robustness, compress, export + runtimes, serve, profile. Writes report/index.md."""
    from mmfurnace.demo import demo_settings, run_demo

    try:
        settings = demo_settings(dataset, report=report, data_root=data_root, epochs=epochs,
                                 fusion_epochs=fusion_epochs, seeds=seeds, skip=tuple(skip or ()))
        run_demo(settings)
    except MMFurnaceError as err:
        _fail(err)


@app.command("profile")
def profile_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder or export folder")],
    out: Annotated[Path, typer.Option(help="Folder for profile.json/md, trace.json, stages.png")] = Path("runs/profile"),
    steps: Annotated[int, typer.Option(help="Batches to time")] = 20,
    mode: Annotated[str, typer.Option(help="train, inference or both")] = "both",
    split: Annotated[str, typer.Option(help="Data split to read batches from")] = "valid",
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
    synthetic: Annotated[bool, typer.Option(help="Random inputs of the right shapes (no dataset)")] = False,
    overrides: Overrides = None,
) -> None:
    """Time each stage (data, host->device, each encoder, fusion, head, loss, backward, optimizer),
    report top operators and FLOP utilization, write a trace, and name the bottleneck."""
    from mmfurnace.bench.profile import profile_checkpoint

    try:
        result = profile_checkpoint(checkpoint, data_cfg_overrides=overrides or [], steps=steps,
                                    out_dir=out, device=device, mode=mode, split=split,
                                    synthetic=synthetic)
    except MMFurnaceError as err:
        _fail(err)
    for part in ("train", "inference"):
        if isinstance(result.get(part), dict) and result[part].get("diagnosis"):
            typer.echo(f"{part}: {result[part]['diagnosis']}")
    typer.echo(f"written: {out}")


@app.command("compress")
def compress_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (a run's best/)")],
    method: Annotated[str, typer.Option(help="fp16, bf16, int8-dynamic, int8-static, qat, sensitivity, prune-unstructured, prune-channel, distill")],
    option: Annotated[Optional[list[str]], typer.Option("-o", "--option", help="Method option key=value, e.g. -o sparsity=0.5 -o calibration=entropy")] = None,  # noqa: UP045
    out: Annotated[Optional[Path], typer.Option(help="Folder for the compressed variant(s)")] = None,  # noqa: UP045
    report: Annotated[Path, typer.Option(help="Report folder (compression.md/.csv/.png are appended)")] = Path("report/compression"),
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads while measuring")] = 1,  # noqa: UP045
    budget: Annotated[Optional[float], typer.Option(help="Accuracy points a variant may lose vs its parent (default: INT8/fp16 1, pruning 1.5, student 2)")] = None,  # noqa: UP045
) -> None:
    """Compress a checkpoint; measure it beside its parent (accuracy, latency, size, MACs).
    Exits with code 3 when a variant loses more accuracy than its budget (marked FAILED in
    the report, its files kept)."""
    from mmfurnace.compress.api import compress
    from mmfurnace.compress.gate import describe_failures
    from mmfurnace.typed_config import apply_overrides

    try:
        options = apply_overrides({}, option or [])
        result = compress(checkpoint, method, out_dir=out or Path("runs/compressed") / method,
                          report_dir=report, threads=threads, accuracy_budget=budget, **options)
    except MMFurnaceError as err:
        _fail(err)
    for row in result.rows:
        delta = "" if row.get("delta_pt") is None else f" delta={row['delta_pt']:+.2f}pt"
        speed = "" if row.get("speedup") is None else f" speedup={row['speedup']:.2f}x"
        typer.echo(f"{row['variant']:<28} {row['backend']:<12} acc={100 * row['accuracy']:.2f}%{delta}{speed}"
                   f"{' ' + row['gate'] if row.get('gate') else ''}")
    typer.echo(f"report: {result.report.get('md', report)}")
    if result.failed:
        typer.secho(f"gate: FAILED: {describe_failures(result.failed)}; marked FAILED in the report and not "
                    "offered as an output (--budget PT sets another budget)", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=3)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (a run's best/ or last/)")],
    out: Annotated[Path, typer.Option(help="Export folder")] = Path("exports/model"),
    format: Annotated[str, typer.Option(help="onnx, torchscript or both (comma-separated)")] = "onnx,torchscript",
    check: Annotated[bool, typer.Option(help="Run every available runtime on a real validation batch; fail on mismatch")] = False,
    precisions: Annotated[str, typer.Option(help="Precisions for --check: fp32,bf16,fp16,int8")] = "fp32",
) -> None:
    """Export the full model, each modality encoder and the fusion+head, with an export.json sidecar."""
    from mmfurnace.data.datasets import first_batch
    from mmfurnace.export import (
        check_parity,
        export_checkpoint,
        format_parity,
        load_spec,
        parity_exit_code,
    )
    from mmfurnace.train.checkpoint import load_model

    try:
        formats = tuple(f.strip() for f in format.split(",") if f.strip())
        export_dir = export_checkpoint(checkpoint, out, formats=formats)
        typer.echo(f"exported: {export_dir}")
        if not check:
            return
        _, meta = load_model(checkpoint)
        batch = first_batch(meta.config.data, "valid", 64, load_spec(export_dir).modalities)
        results = check_parity(export_dir, batch, precisions=[p.strip() for p in precisions.split(",")])
    except MMFurnaceError as err:
        _fail(err)
    typer.echo(format_parity(results))
    raise typer.Exit(code=parity_exit_code(results))


@app.command("bench")
def bench_cmd(
    source: Annotated[Optional[Path], typer.Argument(help="Export folder or checkpoint; omit for a fresh default model")] = None,  # noqa: UP045
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes")] = "1,8,32,128",
    # --backends: the option's old name, still accepted
    runtimes: Annotated[Optional[str], typer.Option("--runtimes", "--backends", help="Comma-separated runtimes (default: all available)")] = None,  # noqa: UP045
    precisions: Annotated[str, typer.Option(help="Comma-separated: fp32,bf16,fp16,int8")] = "fp32",
    iters: Annotated[int, typer.Option(help="Timed calls per runtime and batch size")] = 20,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads for every runtime")] = None,  # noqa: UP045
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write results JSON here")] = None,  # noqa: UP045
    png: Annotated[Optional[Path], typer.Option(help="Write a bar chart here")] = None,  # noqa: UP045
    save_baseline: Annotated[Optional[Path], typer.Option(help="Save these results as a baseline")] = None,  # noqa: UP045
    compare: Annotated[Optional[Path], typer.Option(help="Compare against a baseline; exit 1 on regression")] = None,  # noqa: UP045
    tolerance: Annotated[float, typer.Option(help="Allowed slowdown before a metric regresses")] = 0.15,
) -> None:
    """Latency p50/p95/p99 and throughput per batch size for every runtime and precision, in one run."""
    from mmfurnace.bench.regression import compare as compare_results
    from mmfurnace.bench.regression import load_result, print_compare
    from mmfurnace.bench.regression import save_baseline as save
    from mmfurnace.bench.runtime_suite import run_runtime_bench

    try:
        baseline = load_result(compare) if compare else None  # a bad file fails before the run
        result = run_runtime_bench(
            source, batch_sizes=[int(b) for b in batch_sizes.split(",") if b.strip()],
            runtimes=runtimes.split(",") if runtimes else None,
            precisions=[p.strip() for p in precisions.split(",") if p.strip()],
            iters=iters, threads=threads, json_path=json_out, png_path=png,
        )
        if save_baseline:
            typer.echo(f"baseline: {save(result, save_baseline)}")
        if baseline is not None:
            report = compare_results(result, baseline, tolerance=tolerance)
            print_compare(report)
            raise typer.Exit(code=report.exit_code)
    except MMFurnaceError as err:
        _fail(err)


@app.command("serve")
def serve_cmd(
    export_dir: Annotated[Path, typer.Argument(help="Export folder (from `mmfurnace export`)")],
    config: Annotated[Optional[Path], typer.Option(help="Serving config YAML")] = None,  # noqa: UP045
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    ray: Annotated[bool, typer.Option("--ray", help="Deploy as a Ray Serve application")] = False,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (with --ray)")] = None,  # noqa: UP045
    overrides: Overrides = None,
) -> None:
    """Serve a model over HTTP (KServe v2 + /v1/predict + /metrics) with dynamic batching."""
    from mmfurnace.serve.config import load_serve_config

    try:
        cfg = load_serve_config(config, overrides or [])
        if ray:
            from mmfurnace.serve.ray_app import run_ray

            run_ray(export_dir, cfg, address=address, host=host, port=port)
        else:
            from mmfurnace.serve.server import run_server

            run_server(export_dir, cfg, host=host, port=port)
    except MMFurnaceError as err:
        _fail(err)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
