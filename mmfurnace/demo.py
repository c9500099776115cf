"""The end-to-end demo: data -> [feature cache] -> fusion comparison -> robustness -> compress
-> export -> serve -> profile, on ``tuxpaint`` with frozen pretrained encoders (the default) or on
``digits-av`` with small encoders trained from scratch (demo_settings.py holds both presets).

Each step writes into the report folder and returns the file it wrote, so `report/index.md`
links only what this run produced. Re-running reuses the dataset and finished training runs.
Nothing imports this module but the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from mmfurnace.config import RunConfig, load_run_config
from mmfurnace.demo_settings import (
    DIGITS_COMPRESSION,
    FUSIONS_COMPARED,
    STUDENT,
    UNIMODAL,
    DemoSettings,
    demo_settings,
)

# The settings and the constants of each dataset's preset live in demo_settings; these names
# are imported from here too.
__all__ = ["COMPRESSION_METHODS", "FUSIONS_COMPARED", "STUDENT", "UNIMODAL", "DemoSettings",
           "demo_settings", "run_demo"]
COMPRESSION_METHODS = DIGITS_COMPRESSION


def run_demo(settings: DemoSettings, console: Console | None = None) -> Path:
    """Run every step; return the path of ``report/index.md``."""
    console = console or Console()
    settings.report.mkdir(parents=True, exist_ok=True)
    base = load_run_config(settings.config, [
        f"data.root={settings.data_root}", f"train.epochs={settings.epochs}",
    ])
    steps: list[tuple[str, Callable[[RunConfig, DemoSettings, Console], Path | None]]] = [
        ("data", step_data),
        *([("features", step_features)] if settings.pretrained else []),
        ("fusion", step_fusion),
        ("robustness", step_robustness),
        ("compression", step_compression),
        ("engines", step_engines),
        ("serving", step_serving),
        ("profile", step_profile),
    ]
    timings: dict[str, float] = {}
    for number, (name, step) in enumerate(steps, 1):
        if name in settings.skip:
            continue
        console.rule(f"[bold]step {number}/{len(steps)}: {name} ({settings.dataset})")
        start = time.perf_counter()
        written = step(base, settings, console)
        timings[name] = time.perf_counter() - start
        if written is not None:
            settings.sections[name] = written
        console.print(f"[green]{name} done in {timings[name]:.0f} s[/green] -> {written}")
    index = write_index(settings, timings)
    console.rule(f"[bold]demo finished in {sum(timings.values()):.0f} s")
    console.print(" | ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    console.print(f"report: {index}")
    return index


def step_data(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Build the dataset (reused when present) and write its summary. A missing source (the
    tuxpaint-stamps-default package) fails here, with the command that installs it."""
    from mmfurnace.data.prepare import build_builtin, print_summary

    build_builtin(s.dataset, s.data_root, data_cfg=base.data, limit_per_class=s.limit_per_class,
                  options=s.data_options)
    summary = print_summary(s.data_root, console)
    build = s.data_root / "raw" / "build.json"
    out = s.report / "data.md"
    lines = [f"# Data: {s.dataset}", "",
             f"What it is: [docs/{s.dataset}.md](../docs/{s.dataset}.md).", "",
             "| split | samples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["splits"].items()]
    lines += ["", "Presence per modality: " + ", ".join(
        f"{m} {p:.0%}" for m, p in summary["presence"].items())]
    if build.is_file():
        record = json.loads(build.read_text())
        if record.get("attribution"):
            lines += ["", f"Attribution: {record['attribution']}"]
        if s.dataset == "digits-av":
            lines += proxy_section(record, s.data_root)
    out.write_text("\n".join(lines) + "\n")
    return out


def proxy_section(build: dict, data_root: Path) -> list[str]:
    """The report lines for the linear-probe accuracies ``benchmarks/digits_av_proxies.py
    --record`` stores in the build's ``build.json`` under "proxy_accuracies", or how to get them."""
    proxies = build.get("proxy_accuracies")
    if not proxies:
        return ["", "Linear-probe accuracy per modality: not recorded for this build; "
                f"`python benchmarks/digits_av_proxies.py --root {data_root} --record` adds it."]
    return ["", "Linear-probe accuracy per modality (how hard each one is alone):", "",
            "```", json.dumps(proxies, indent=2), "```"]


def step_features(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Run each frozen pretrained encoder once over every split into the feature cache; every
    later training run, the probe and the robustness step read it (hashing the inputs only)."""
    from mmfurnace.demo_pretrained import build_feature_cache

    return build_feature_cache(base, s, console)


def fusion_variants(runs: Path, fusion_epochs: int, warm: bool = True) -> list:
    """Unimodal baselines (one encoder + head) and the fusion strategies on all modalities.

    With ``warm``, each fusion run starts its encoders from the unimodal baselines of the same
    seed (listed first, so they exist by then): trained jointly from scratch, the fusions fit
    whichever modality is easiest first and the others' encoders lag, and the result swung by
    up to 25 points between seeds (README, Results). Frozen pretrained encoders have nothing
    to warm-start."""
    from mmfurnace.train.ablation import ConfigVariant

    # one modality: nothing to drop out
    variants = [ConfigVariant(f"unimodal-{m}", (f"data.modalities=[{m}]", "model.fusion=late",
                                                "train.modality_dropout={}"))
                for m in UNIMODAL]
    start = tuple(f"train.init_encoders.{m}={runs.resolve() / f'unimodal-{m}'}/seed{{seed}}/best"
                  for m in UNIMODAL) if warm else ()
    variants += [ConfigVariant(f, (f"model.fusion={f}", f"train.epochs={fusion_epochs}", *start))
                 for f in FUSIONS_COMPARED]
    return variants


def step_fusion(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Train unimodal baselines and each fusion over the seeds; write the results table (with
    pretrained encoders, a logistic-regression probe on the cached features below it)."""
    from mmfurnace.train.ablation import run_ablation

    variants = fusion_variants(s.report / "fusion" / "runs", s.fusion_epochs, warm=not s.pretrained)
    result = run_ablation(base, variants, seeds=s.seeds, out_dir=s.report / "fusion",
                          resume=True)
    if s.pretrained:
        from mmfurnace.demo_pretrained import append_probe

        append_probe(base, result.files["markdown"], console)
    console.print(result.files["markdown"].read_text())
    return result.files["markdown"]


def best_checkpoint(s: DemoSettings, variant: str | None = None) -> Path:
    """The best/ checkpoint of ``variant``'s (default: the deployed fusion's) first seed."""
    return s.report / "fusion" / "runs" / (variant or s.deploy) / f"seed{s.seeds[0]}" / "best"


def step_robustness(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Corruption curves per modality for each fusion (first seed), one report."""
    from mmfurnace.train.robustness import write_robustness_report

    checkpoints = {}
    for fusion in FUSIONS_COMPARED:
        ckpt = best_checkpoint(s, fusion)
        if ckpt.is_dir():
            checkpoints[fusion] = ckpt
        else:
            console.print(f"[yellow]no checkpoint for {fusion}; skipped[/yellow]")
    if s.pretrained:
        from mmfurnace.train.robustness_cached import cached_robustness

        console.print("robustness on cached features; re-encoded: " + ", ".join(
            f"{m}:{c}" for m, c in s.corruptions or () if c != "missing"))
        results = cached_robustness(checkpoints, corruptions=s.corruptions or (), levels=s.levels,
                                    cache_dir=base.train.feature_cache_dir)
    else:
        from mmfurnace.train.checkpoint_eval import evaluate_checkpoint

        noise = ",".join(f"{m}:{c}" for m, c in s.corruptions) if s.corruptions else "all"
        results = {f: evaluate_checkpoint(c, noise=noise, levels=s.levels,
                                          out_dir=s.report / "robustness" / f)["robustness"]
                   for f, c in checkpoints.items()}
    files = write_robustness_report(results, s.report / "robustness", baseline="late")
    return files["markdown"]


def step_compression(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Each of the preset's compression methods on the deployed model (digits-av: INT8 dynamic,
    INT8 static, 50% channel pruning + fine-tune, distillation; pretrained: the INT8 ones), every
    variant measured beside its parent in report/compression.md."""
    from mmfurnace.compress.api import compress, compress_together

    report_dir = s.report / "compression"
    if s.pretrained:  # one export and one measurement of the parents for every method
        console.print("compress: " + ", ".join(f"{m} {o or ''}" for m, o in s.compression))
        results = compress_together(best_checkpoint(s), s.compression, out_dir=s.report / "compressed",
                                    report_dir=report_dir, threads=1, rounds=s.compression_rounds,
                                    latency_samples=8, openvino=s.compression_openvino)
    else:
        results = []
        for method, options in s.compression:
            if s.quick:
                options = {**options, "finetune_epochs": 1, "max_steps": 2} if method in (
                    "prune-channel", "distill") else options
            console.print(f"compress: {method} {options or ''}")
            results.append(compress(best_checkpoint(s), method, out_dir=s.report / "compressed" / method,
                                    report_dir=report_dir, threads=1, rounds=s.compression_rounds,
                                    **options))
    for result in results:
        for row in result.rows:  # the accuracy gate's verdict (the report's "gate" column)
            if row.get("gate"):
                colour = "red" if row["gate"] == "FAILED" else "green"
                console.print(f"  {row['variant']}@{row['backend']}: {row['delta_pt']:+.2f} pt, "
                              f"{row['speedup']:.2f}x -> [{colour}]{row['gate']}[/{colour}] "
                              f"(budget {row['budget_pt']:g} pt)")
    return report_dir / "compression.md"


def export_dir(s: DemoSettings) -> Path:
    return s.report / "export" / s.deploy


def step_engines(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Export the deployed model, check parity on a real batch, benchmark the runtimes."""
    from mmfurnace.bench.engine_suite import run_engine_bench
    from mmfurnace.bench.runtime_report import best_cpu_vs_eager, format_table
    from mmfurnace.bench.runtime_suite import default_lengths
    from mmfurnace.cpu import cpu_isa
    from mmfurnace.data.datasets import first_batch
    from mmfurnace.export import assert_parity, export_checkpoint, load_spec

    out = export_checkpoint(best_checkpoint(s), export_dir(s))
    batch = first_batch(base.data, "valid", s.parity_rows, load_spec(out).modalities)
    assert_parity(out, batch, runtimes=s.engine_runtimes)
    console.print(f"parity: every available runtime matches eager on {s.parity_rows} real rows")
    folder = s.report / "engines"
    result = run_engine_bench(out, batch_sizes=s.engine_batches, iters=s.engine_iters, threads=1,
                              backends=s.engine_runtimes, lengths=default_lengths(base.data),
                              json_path=folder / "engines.json", png_path=folder / "engines.png")
    isa = cpu_isa().describe()
    ratio_batch = 32 if 32 in s.engine_batches else max(s.engine_batches)
    best = best_cpu_vs_eager(result, ratio_batch)
    console.print(f"CPU ISA: {isa}; best CPU runtime vs eager FP32 at batch {ratio_batch}: {best}",
                  markup=False)
    lines = ["# Inference engines", "", f"Export: `{out}` ({s.deploy} fusion). Parity: passed on "
             f"{s.parity_rows} real validation rows.", "", f"CPU ISA: {isa}.", "", "```",
             format_table(result, ratio_batch=ratio_batch), "```", "",
             f"Best CPU runtime vs eager FP32 at batch {ratio_batch}: {best}", "",
             "![engines](engines.png)"]
    (folder / "engines.md").write_text("\n".join(lines) + "\n")
    return folder / "engines.md"


def step_serving(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Start the server, send real test samples through tritonclient (KServe v2) and the
    multipart endpoint, print the answers and per-stage timings, stop it."""
    from mmfurnace.serve.smoke import serve_smoke

    out = s.report / "serving.md"
    text = serve_smoke(export_dir(s), s.data_root / "raw", console=console)
    out.write_text(text + _serve_load(s, console))
    return out


def _serve_load(s: DemoSettings, console: Console) -> str:
    """benchmarks/serve_load.py over HTTP (the preset's variants and clients, bounded), when the
    demo runs from a checkout that has it."""
    import subprocess
    import sys

    script = Path("benchmarks/serve_load.py")
    if not script.is_file():
        return "\n(serving load benchmark skipped: run the demo from the repository root)\n"
    seconds, requests = s.serve_load
    cmd = [sys.executable, str(script), "--export", str(export_dir(s)), "--data",
           str(s.data_root / "raw"), "--seconds", seconds, "--requests", requests,
           "--variants", s.serve_variants, "--clients", str(s.serve_clients),
           "--no-engine-level", "--json", str(s.report / "serve_load.json")]
    console.print("serving load benchmark: " + " ".join(cmd[1:]))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    console.print(done.stdout[-3000:])
    if done.returncode != 0:
        return f"\n## Load benchmark failed\n\n```\n{done.stderr[-2000:]}\n```\n"
    return (f"\n## Load benchmark (benchmarks/serve_load.py, {s.serve_clients} clients over HTTP)\n\n```\n"
            + done.stdout.strip() + "\n```\n\nJSON: [serve_load.json](serve_load.json)\n")


def step_profile(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Per-stage profile of training and inference of the deployed model."""
    from mmfurnace.bench.profile import profile_checkpoint

    folder = s.report / "profile"
    result = profile_checkpoint(best_checkpoint(s), steps=s.profile_steps, out_dir=folder, mode=s.profile_mode,
                                data_cfg_overrides=[f"root={s.data_root}", *(
                                    [f"batch_size={s.profile_batch}"] if s.profile_batch else [])])
    for part in ("train", "inference"):
        if isinstance(result.get(part), dict):
            console.print(f"{part}: {result[part].get('diagnosis')}")
    return folder / "profile.md"


def write_index(s: DemoSettings, timings: dict[str, float]) -> Path:
    """report/index.md linking every section this run wrote, with step times."""
    titles = {
        "data": "Data summary", "features": "Frozen-feature cache (pretrained encoders)",
        "fusion": "Fusion strategies vs unimodal baselines",
        "robustness": "Robustness to noise and missing modalities",
        "compression": "Compression: accuracy vs latency vs size",
        "engines": "Export and inference engines", "serving": "Serving benchmark",
        "profile": "Profile of training and inference",
    }
    lines = ["# mmfurnace demo report", "",
             f"Built {time.strftime('%Y-%m-%d %H:%M:%S')}; every figure below was produced by this run.",
             "", "| section | file | step time |", "|---|---|---|"]
    for name, path in s.sections.items():
        rel = path.relative_to(s.report) if path.is_relative_to(s.report) else path
        lines.append(f"| {titles.get(name, name)} | [{rel}]({rel}) | {timings.get(name, 0):.0f} s |")
    index = s.report / "index.md"
    index.write_text("\n".join(lines) + "\n")
    return index
