"""The end-to-end demo: data -> fusion comparison -> robustness -> compress -> export -> serve -> profile.

Each step writes into the report folder and returns the file it wrote, so `report/index.md`
links only what this run produced. Re-running reuses the dataset and finished training runs.
Nothing imports this module but the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from mmfurnace.config import RunConfig, load_run_config

FUSIONS_COMPARED = ("early", "late", "cross_attention", "low_rank_tensor")
UNIMODAL = ("audio", "image", "text")


@dataclass
class DemoSettings:
    """What the demo runs. ``quick`` shrinks everything for the end-to-end test."""

    config: Path = Path("configs/default.yaml")
    data_root: Path = Path("data/digits-av")
    report: Path = Path("report")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 12  # unimodal baselines: their accuracy has levelled off by then
    fusion_epochs: int = 5  # fusion models, whose encoders start from those baselines
    limit_per_class: int | None = None
    skip: tuple[str, ...] = ()
    quick: bool = False
    sections: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def quick_settings(cls, root: Path) -> DemoSettings:
        return cls(data_root=root / "data", report=root / "report", seeds=(0,), epochs=1,
                   fusion_epochs=1, limit_per_class=4, quick=True)


def run_demo(settings: DemoSettings, console: Console | None = None) -> Path:
    """Run every step; return the path of ``report/index.md``."""
    console = console or Console()
    settings.report.mkdir(parents=True, exist_ok=True)
    base = load_run_config(settings.config, [
        f"data.root={settings.data_root}", f"train.epochs={settings.epochs}",
    ])
    steps: list[tuple[str, Callable[[RunConfig, DemoSettings, Console], Path | None]]] = [
        ("data", step_data),
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
        console.rule(f"[bold]step {number}/{len(steps)}: {name}")
        start = time.perf_counter()
        written = step(base, settings, console)
        timings[name] = time.perf_counter() - start
        if written is not None:
            settings.sections[name] = written
        console.print(f"[green]{name} done in {timings[name]:.0f} s[/green] -> {written}")
    index = write_index(settings, timings)
    console.rule("[bold]demo finished")
    console.print(f"report: {index}")
    return index


def step_data(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Build the built-in dataset (reused when present) and write its summary."""
    from mmfurnace.data.prepare import build_builtin, print_summary

    build_builtin("digits-av", s.data_root, data_cfg=base.data, limit_per_class=s.limit_per_class)
    summary = print_summary(s.data_root, console)
    build = s.data_root / "raw" / "build.json"
    out = s.report / "data.md"
    lines = ["# Data: digits-av", "", "What it is: [docs/digits-av.md](../docs/digits-av.md).", "",
             "| split | samples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["splits"].items()]
    lines += ["", "Presence per modality: " + ", ".join(
        f"{m} {p:.0%}" for m, p in summary["presence"].items())]
    if build.is_file():
        lines += proxy_section(json.loads(build.read_text()), s.data_root)
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


def fusion_variants(runs: Path, fusion_epochs: int) -> list:
    """Unimodal baselines (one encoder + head) and the fusion strategies on all modalities.

    Each fusion run starts its encoders from the unimodal baselines of the same seed (listed
    first, so they exist by then): trained jointly from scratch, the fusions fit whichever
    modality is easiest first and the others' encoders lag, and the result swung by up to
    25 points between seeds (README, Results)."""
    from mmfurnace.train.ablation import ConfigVariant

    # one modality: nothing to drop out
    variants = [ConfigVariant(f"unimodal-{m}", (f"data.modalities=[{m}]", "model.fusion=late",
                                                "train.modality_dropout={}"))
                for m in UNIMODAL]
    warm = tuple(f"train.init_encoders.{m}={runs.resolve() / f'unimodal-{m}'}/seed{{seed}}/best"
                 for m in UNIMODAL)
    variants += [ConfigVariant(f, (f"model.fusion={f}", f"train.epochs={fusion_epochs}", *warm))
                 for f in FUSIONS_COMPARED]
    return variants


def step_fusion(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Train unimodal baselines and each fusion over the seeds; write the results table."""
    from mmfurnace.train.ablation import run_ablation

    variants = fusion_variants(s.report / "fusion" / "runs", s.fusion_epochs)
    result = run_ablation(base, variants, seeds=s.seeds, out_dir=s.report / "fusion",
                          resume=True)
    console.print(result.files["markdown"].read_text())
    return result.files["markdown"]


def best_checkpoint(s: DemoSettings, variant: str = "cross_attention") -> Path:
    """The best/ checkpoint of ``variant``'s first seed in this demo's fusion runs."""
    return s.report / "fusion" / "runs" / variant / f"seed{s.seeds[0]}" / "best"


def step_robustness(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Corruption curves per modality for each fusion (first seed), one report."""
    from mmfurnace.train.checkpoint_eval import evaluate_checkpoint
    from mmfurnace.train.robustness import write_robustness_report

    # four levels keep the curve's shape and the demo inside its time budget
    levels = (0.0, 0.5, 1.0) if s.quick else (0.0, 0.33, 0.67, 1.0)
    results = {}
    for fusion in FUSIONS_COMPARED:
        ckpt = best_checkpoint(s, fusion)
        if not ckpt.is_dir():
            console.print(f"[yellow]no checkpoint for {fusion}; skipped[/yellow]")
            continue
        out = evaluate_checkpoint(ckpt, noise="all", levels=levels,
                                  out_dir=s.report / "robustness" / fusion)
        results[fusion] = out["robustness"]
    files = write_robustness_report(results, s.report / "robustness", baseline="late")
    return files["markdown"]


# The student: late fusion of narrow encoders (image CNN 4 -> 16 channels, one 16-wide audio
# conv block, 32-wide text transformer), about 3.6x fewer parameters than the cross-attention
# teacher. A student this small spends its time per graph node, not per FLOP: the second audio
# block cost 7 % of its latency and no accuracy. Narrower text, one image conv block or an MLP
# image encoder ran faster but lost 7-13 points (README, compression notes).
STUDENT = {"fusion": "late", "hidden_dim": 32, "proj_dim": 16,
           "encoders": {"image": {"channels": 4, "dim": 32}, "audio": {"dim": 16, "layers": 1},
                        "text": {"dim": 32}}}

COMPRESSION_METHODS: tuple[tuple[str, dict], ...] = (
    ("int8-dynamic", {}),
    ("int8-static", {"calibration": "entropy"}),
    # three prune + fine-tune rounds against the unpruned parent: one 50 % cut lost 3-5 points
    ("prune-channel", {"sparsity": 0.5, "iterative_steps": 3, "distill": True, "finetune_epochs": 10}),
    ("distill", {"student": STUDENT, "finetune_epochs": 30}),
)


def step_compression(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """INT8 dynamic, INT8 static, 50% channel pruning + fine-tune and distillation of the
    cross-attention model; every variant measured beside its parent in report/compression.md."""
    from mmfurnace.compress.api import compress

    report_dir = s.report / "compression"
    for method, options in COMPRESSION_METHODS:
        if s.quick:
            options = {**options, "finetune_epochs": 1, "max_steps": 2} if method in (
                "prune-channel", "distill") else options
        console.print(f"compress: {method} {options or ''}")
        result = compress(best_checkpoint(s), method, out_dir=s.report / "compressed" / method,
                          report_dir=report_dir, threads=1, rounds=3 if s.quick else 20, **options)
        for row in result.rows:  # the accuracy gate's verdict (the report's "gate" column)
            if row.get("gate"):
                colour = "red" if row["gate"] == "FAILED" else "green"
                console.print(f"  {row['variant']}@{row['backend']}: {row['delta_pt']:+.2f} pt, "
                              f"{row['speedup']:.2f}x -> [{colour}]{row['gate']}[/{colour}] "
                              f"(budget {row['budget_pt']:g} pt)")
    return report_dir / "compression.md"


def export_dir(s: DemoSettings) -> Path:
    return s.report / "export" / "cross_attention"


def step_engines(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Export the cross-attention model, check parity on a real batch, benchmark engines."""
    from mmfurnace.bench.engine_suite import run_engine_bench
    from mmfurnace.data.datasets import first_batch
    from mmfurnace.export import assert_parity, export_checkpoint, load_spec

    out = export_checkpoint(best_checkpoint(s), export_dir(s))
    batch = first_batch(base.data, "valid", 64, load_spec(out).modalities)
    assert_parity(out, batch)
    console.print("parity: every available backend matches eager")
    folder = s.report / "engines"
    result = run_engine_bench(out, batch_sizes=(1, 32) if s.quick else (1, 8, 32, 128),
                              iters=4 if s.quick else 20, threads=1,
                              json_path=folder / "engines.json", png_path=folder / "engines.png")
    lines = ["# Inference engines", "", f"Export: `{out}`. Parity: passed on a real validation batch.",
             "", "```", _engine_table(result), "```", "",
             f"Best CPU backend vs eager FP32 at batch 32: {result.get('best_cpu_vs_eager_b32')}",
             "", "![engines](engines.png)"]
    (folder / "engines.md").write_text("\n".join(lines) + "\n")
    return folder / "engines.md"


def _engine_table(result: dict) -> str:
    from mmfurnace.bench.engines import format_table

    return format_table(result)


def step_serving(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Start the server, send real test samples through tritonclient (KServe v2) and the
    multipart endpoint, print the answers and per-stage timings, stop it."""
    from mmfurnace.serve.smoke import serve_smoke

    out = s.report / "serving.md"
    text = serve_smoke(export_dir(s), s.data_root / "raw", console=console)
    out.write_text(text + _serve_load(s, console))
    return out


def _serve_load(s: DemoSettings, console: Console) -> str:
    """benchmarks/serve_load.py over HTTP (variants a-d, 64 clients, bounded), when the demo
    runs from a checkout that has it."""
    import subprocess
    import sys

    script = Path("benchmarks/serve_load.py")
    if not script.is_file():
        return "\n(serving load benchmark skipped: run the demo from the repository root)\n"
    seconds, requests = ("2", "100") if s.quick else ("6", "600")
    cmd = [sys.executable, str(script), "--export", str(export_dir(s)), "--data",
           str(s.data_root / "raw"), "--seconds", seconds, "--requests", requests,
           "--no-engine-level", "--json", str(s.report / "serve_load.json")]
    console.print("serving load benchmark: " + " ".join(cmd[1:]))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    console.print(done.stdout[-3000:])
    if done.returncode != 0:
        return f"\n## Load benchmark failed\n\n```\n{done.stderr[-2000:]}\n```\n"
    return ("\n## Load benchmark (benchmarks/serve_load.py, 64 clients over HTTP)\n\n```\n"
            + done.stdout.strip() + "\n```\n\nJSON: [serve_load.json](serve_load.json)\n")


def step_profile(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Per-stage profile of training and inference of the cross-attention model."""
    from mmfurnace.bench.profile import profile_checkpoint

    folder = s.report / "profile"
    result = profile_checkpoint(best_checkpoint(s), steps=3 if s.quick else 20, out_dir=folder,
                                data_cfg_overrides=[f"root={s.data_root}"])
    for part in ("train", "inference"):
        if isinstance(result.get(part), dict):
            console.print(f"{part}: {result[part].get('diagnosis')}")
    return folder / "profile.md"


def write_index(s: DemoSettings, timings: dict[str, float]) -> Path:
    """report/index.md linking every section this run wrote, with step times."""
    titles = {
        "data": "Data summary", "fusion": "Fusion strategies vs unimodal baselines",
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
