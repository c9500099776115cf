"""mmfurnace vs MultiBench on the same AV-MNIST-layout files: accuracy, per-modality accuracy,
training samples/s and peak memory, in one table.

    python benchmarks/avmnist_vs_multibench.py [--data data/digits-av] [--epochs 1,5]
        [--variants default-early,default-late,...] [--multibench PATH --multibench-python PY]
        [--rows multibench|unique] [--threads 1] [--seed 0] [--out runs/avmnist-bench]
        [--json FILE]

1. Files. The packed dataset ``--packed`` (default: ``--data``'s raw manifest packed once with
   ``data.audio.features=logmel n_mels=112 max_seconds=1.12``, audio + image only) is written
   in MultiBench's AV-MNIST layout (:func:`mmfurnace.data.avmnist_write.packed_to_avmnist`):
   images (N, 784) 0..255, audio (N, 112, 112) log-mel spectrograms 0..255. ``--rows
   multibench`` (default) gives MultiBench's 60,000 train rows (valid from 55,000) and 10,000
   test rows, repeating the source's samples (its loader hard-codes those counts);
   ``--rows unique`` keeps each sample once (mmfurnace only: MultiBench cannot read it).
   ``--layout DIR`` uses existing files instead.
2. Runs, each a subprocess with one torch thread, batch size 40, seed 0, on those files:
   MultiBench's own ``examples/multimedia/avmnist_simple_late_fusion.py`` through
   ``benchmarks/multibench_avmnist_runner.py`` under ``--multibench-python`` (a separate
   environment with MultiBench's dependencies; without ``--multibench`` the column is skipped
   and the table says so), then each mmfurnace variant through ``python -m mmfurnace.train``.
   The order alternates MultiBench / mmfurnace so load drifting on a shared machine hits both.
   MultiBench runs once for the largest epoch count: its schedule is a constant-rate SGD, so
   its model after epoch e *is* an e-epoch run; it is tested after every epoch and its
   best-valid checkpoint as its example reports it. mmfurnace's cosine schedule depends on
   the run length, so each epoch count is its own run (test of the best-valid epoch).
3. Measured: test accuracy; accuracy with one modality alone (mmfurnace: the other marked
   absent; MultiBench has no masks: the other zeroed, as its robustness scripts do); training
   samples/s (the epoch loop: loading + forward + backward + step, no validation); peak
   anonymous memory of the process tree (sampled every 0.2 s from /proc: the sum of each
   process's proportional share, Pss_Anon, so pages a forked child shares copy-on-write with
   its parent count once: MultiBench's memory_profiler forks a sampler after the arrays are
   loaded, and summed RssAnon counted them twice); parameters.

Variants (``--variants``, comma-separated names):

    default-<fusion>   mmfurnace's defaults for data.dataset=avmnist, with that fusion
    mbsize-early       MultiBench's model in mmfurnace: LeNet encoders of its widths (image 6
                       channels + 3 blocks -> 48, audio 6 + 5 blocks -> 192), their
                       concatenation through a 100-wide MLP (early fusion), trained by
                       mmfurnace's recipe: the same-model-size row

4. Speed (``--speed-rounds R``): R rounds; in each, MultiBench and every ``--speed-variants``
   model train ``--speed-steps`` batches, each in a fresh process, in alternating order
   (MultiBench's runner stops its epoch after that many batches; mmfurnace trains on the
   first that-many batches of the same train split). The table gives samples/s per round,
   the median, and the median per-round ratio to MultiBench: ratios of runs made next to
   each other, which is what a shared machine can measure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mmfurnace.bench.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "multibench_avmnist_runner.py"
BATCH = 40
PACK_AUDIO = {"features": "logmel", "n_mels": 112, "max_seconds": 1.12}
FUSIONS = ("early", "late", "cross_attention", "low_rank_tensor")
MBSIZE = [
    "model.fusion=early", "model.hidden_dim=100",
    "model.encoders.image={name: lenet, channels: 6, layers: 3, dim: 48}",
    "model.encoders.audio={name: lenet, channels: 6, layers: 5, dim: 192}",
]
VARIANTS: dict[str, list[str]] = {
    **{f"default-{f}": [f"model.fusion={f}"] for f in FUSIONS},
    "mbsize-early": MBSIZE,
}
DEFAULT_VARIANTS = ("default-early", "default-late", "default-cross_attention",
                    "default-low_rank_tensor", "mbsize-early")


# --------------------------------------------------------------------------- files


def prepare_layout(args: argparse.Namespace) -> Path:
    """The AV-MNIST-layout folder to train on (written once under ``--out``)."""
    if args.layout is not None:
        return args.layout
    from mmfurnace.data.avmnist_write import packed_to_avmnist

    out = args.out / f"avmnist-{args.rows.replace(',', '-')}"
    if (out / "layout.json").is_file():
        return out
    packed = args.packed or _pack_logmel(args.data, args.out / "packed-logmel112")
    if args.rows == "multibench":
        rows = None
    elif args.rows == "unique":
        rows = {"train": None, "valid": None, "test": None}
    else:
        rows = dict(zip(("train", "valid", "test"), (int(n) for n in args.rows.split(",")), strict=True))
    summary = packed_to_avmnist(packed, out, rows=rows, seed=args.seed)
    print(f"AV-MNIST layout: {out} {summary['rows']} from {summary['unique_samples']} samples")
    return out


def _pack_logmel(data: Path, out: Path) -> Path:
    if (out / "info.json").is_file():
        return out
    from mmfurnace.data.config import DataConfig
    from mmfurnace.data.prepare import pack_manifest

    manifest = data / "raw" / "manifest.jsonl"
    if not manifest.is_file():
        sys.exit(f"error: {manifest} not found; build it with `mmfurnace data build digits-av "
                 f"--out {data}` or pass --packed / --layout")
    cfg = DataConfig(modalities=["audio", "image"], audio=PACK_AUDIO)
    return pack_manifest(manifest, out, data_cfg=cfg)


# --------------------------------------------------------------------------- processes


def _tree_anon_kib(pid: int) -> int:
    """Anonymous memory of ``pid`` and its descendants, KiB: Pss_Anon (RssAnon where the
    kernel has no smaps_rollup); 0 for processes already gone."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            total += _anon_kib(p)
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        stack += [int(c) for c in children]
    return total


def _anon_kib(pid: int) -> int:
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    source, key = (rollup, "Pss_Anon:") if rollup.exists() else (Path(f"/proc/{pid}/status"), "RssAnon:")
    for line in source.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def run_measured(cmd: list[str], *, cwd: Path, log: Path) -> tuple[int, float]:
    """Run ``cmd``; return (exit status, peak anonymous memory (PSS) of its process tree, MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MB_WORKDIR": str(cwd.resolve())}
    peak = 0
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.2):
                peak = max(peak, _tree_anon_kib(proc.pid))

        poller = threading.Thread(target=sample, daemon=True)
        poller.start()
        code = proc.wait()
        done.set()
        poller.join()
    return code, peak / 1024


def run_multibench(args: argparse.Namespace, layout: Path, epochs: int) -> dict[str, Any]:
    work = args.out / "multibench"
    work.mkdir(parents=True, exist_ok=True)
    result_file = work / "result.json"
    if result_file.is_file() and not args.rerun:
        saved = json.loads(result_file.read_text())
        if len(saved.get("epochs", [])) >= epochs and "peak_anon_mib" in saved:
            print(f"reusing {result_file}")
            return saved
    result_file.unlink(missing_ok=True)
    cmd = [str(args.multibench_python), str(RUNNER), "--multibench", str(args.multibench),
           "--data", str(layout.resolve()), "--epochs", str(epochs), "--threads",
           str(args.threads), "--seed", str(args.seed), "--json", str(result_file.resolve())]
    print("$ " + " ".join(cmd), flush=True)
    code, peak = run_measured(cmd, cwd=work, log=work / "log.txt")
    if code != 0 or not result_file.is_file():
        raise SystemExit(f"error: MultiBench run failed ({code}); see {work / 'log.txt'}")
    result = {**json.loads(result_file.read_text()), "peak_anon_mib": peak}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def run_mmfurnace(args: argparse.Namespace, layout: Path, variant: str, epochs: int) -> dict[str, Any]:
    out_dir = args.out / "runs" / f"{variant}-e{epochs}"
    if (out_dir / "results.json").is_file() and not args.rerun:
        print(f"reusing {out_dir}")
        return json.loads((out_dir / "results.json").read_text())
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    overrides = variant_overrides(args, layout, variant, epochs, out_dir)
    cmd = [sys.executable, "-m", "mmfurnace.train", *overrides, "--no-progress"]
    print("$ " + " ".join(cmd), flush=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log = out_dir.parent / f"{variant}-e{epochs}.log"
    code, peak = run_measured(cmd, cwd=REPO, log=log)
    if code != 0:
        raise SystemExit(f"error: mmfurnace run {variant} failed ({code}); see {log}")
    results = json.loads((out_dir / "results.json").read_text())
    results["peak_anon_mib"] = peak
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def variant_overrides(
    args: argparse.Namespace, layout: Path, variant: str, epochs: int, out_dir: Path
) -> list[str]:
    return [
        "data.dataset=avmnist", f"data.root={layout.resolve()}", "data.modalities=[audio, image]",
        f"data.batch_size={BATCH}", f"train.epochs={epochs}", f"train.threads={args.threads}",
        f"train.seed={args.seed}", f"train.out_dir={out_dir.resolve()}", *VARIANTS[variant],
        *args.override,
    ]


# --------------------------------------------------------------------------- speed


class _Head:
    """The first ``n`` samples of a dataset (keeps ``.info``)."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n, self.info = dataset, min(n, len(dataset)), dataset.info

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def speed_worker(args: argparse.Namespace) -> int:
    """One mmfurnace speed run: the recipe's epoch loop over the first ``--speed-steps``
    batches of the train split (validation on one batch); prints the samples/s."""
    import tempfile

    from mmfurnace.config import load_run_config
    from mmfurnace.data.datasets import build_dataset
    from mmfurnace.train.recipe import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_run_config(None, variant_overrides(args, args.layout, args.speed_worker, 1,
                                                      Path(tmp) / "run"))
        data = {"train": _Head(build_dataset(cfg.data, "train"), args.speed_steps * BATCH),
                "valid": _Head(build_dataset(cfg.data, "valid"), BATCH)}
        result = train(cfg, progress=False, datasets=data)
    record = {"samples_per_s": result.history[0]["samples_per_s"],
              "params": sum(p.numel() for p in result.model.parameters())}
    print("SPEED_RESULT " + json.dumps(record))
    return 0


def run_speed(args: argparse.Namespace, layout: Path) -> dict[str, Any]:
    """``--speed-rounds`` rounds; in each, MultiBench then every speed variant trains
    ``--speed-steps`` batches in its own process (alternating order every round)."""
    systems: list[str] = (["multibench"] if args.multibench else []) + args.speed_variants
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    work = args.out / "speed"
    work.mkdir(parents=True, exist_ok=True)
    for r in range(args.speed_rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            log = work / f"{system}-round{r}.log"
            if system == "multibench":
                cmd = [str(args.multibench_python), str(RUNNER), "--multibench",
                       str(args.multibench), "--data", str(layout.resolve()), "--epochs", "1",
                       "--threads", str(args.threads), "--seed", str(args.seed),
                       "--max-steps", str(args.speed_steps)]
                tag = "MULTIBENCH_RESULT "
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--layout",
                       str(layout.resolve()), "--speed-worker", system, "--speed-steps",
                       str(args.speed_steps), "--threads", str(args.threads), "--seed",
                       str(args.seed), *[f"--override={o}" for o in args.override]]
                tag = "SPEED_RESULT "
            code, peak = run_measured(cmd, cwd=work, log=log)
            line = next((ln for ln in log.read_text().splitlines() if ln.startswith(tag)), None)
            if code != 0 or line is None:
                raise SystemExit(f"error: speed run {system} failed ({code}); see {log}")
            raw = json.loads(line[len(tag):])
            sps = raw["epochs"][0]["samples_per_s"] if system == "multibench" else raw["samples_per_s"]
            runs[system].append({"round": r, "samples_per_s": sps, "peak_anon_mib": peak})
            print(f"round {r}: {system} {sps:.1f} samples/s, peak anon PSS {peak:.0f} MiB",
                  flush=True)
    return runs


def print_speed(runs: dict[str, list[dict[str, Any]]]) -> None:
    from statistics import median

    print("\n| system | samples/s per round | median | x MultiBench (per-round median) "
          "| peak anon PSS |")
    print("|---|---|---|---|---|")
    mb = runs.get("multibench")
    for system, rs in runs.items():
        values = [r["samples_per_s"] for r in rs]
        ratio = "—"
        if mb and system != "multibench":
            ratio = f"{median(a['samples_per_s'] / b['samples_per_s'] for a, b in zip(rs, mb, strict=True)):.2f}x"
        print(f"| {system} | {', '.join(f'{v:.0f}' for v in values)} | {median(values):.1f} | "
              f"{ratio} | {max(r['peak_anon_mib'] for r in rs):.0f} MiB |")


# --------------------------------------------------------------------------- table


def rows_for(results: dict[str, Any], epochs: list[int]) -> list[dict[str, Any]]:
    rows = []
    mb = results.get("multibench")
    for e in epochs:
        if mb is not None and len(mb["epochs"]) >= e:
            ep = mb["epochs"][e - 1]
            best = mb.get("best_test", {}) if e == max(epochs) else {}
            rows.append({"system": "MultiBench", "variant": "late (Concat) example", "epochs": e,
                         "test_accuracy": ep["test_accuracy"], "image_alone": ep["image_alone"],
                         "audio_alone": ep["audio_alone"], "samples_per_s": ep["samples_per_s"],
                         "peak_anon_mib": mb["peak_anon_mib"], "params": mb["params"],
                         "best_valid_test_accuracy": best.get("test_accuracy")})
        for variant, by_epochs in results["mmfurnace"].items():
            r = by_epochs.get(str(e))
            if r is None:
                continue
            test = r["test"]
            alone = test.get("per_modality_accuracy", {})
            rows.append({"system": "mmfurnace", "variant": variant, "epochs": e,
                         "test_accuracy": test["accuracy"], "image_alone": alone.get("image"),
                         "audio_alone": alone.get("audio"),
                         "samples_per_s": r["train_samples_per_s"],
                         "peak_anon_mib": r.get("peak_anon_mib"), "params": r["params"],
                         "best_epoch": r["best_epoch"]})
    return rows


def print_table(rows: list[dict[str, Any]], note: str | None) -> None:
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f} %"

    print("\n| system | variant | epochs | test acc | image alone | audio alone | train samples/s "
          "| peak anon PSS | params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['variant']} | {r['epochs']} | {pct(r['test_accuracy'])} | "
              f"{pct(r['image_alone'])} | {pct(r['audio_alone'])} | {r['samples_per_s']:.0f} | "
              f"{r['peak_anon_mib']:.0f} MiB | {r['params'] / 1e3:.0f}k |")
    if note:
        print(f"\n{note}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "data" / "digits-av",
                   help="built dataset folder whose raw/manifest.jsonl is packed as log-mel")
    p.add_argument("--packed", type=Path, help="a packed dataset with log-mel audio + 28x28 images")
    p.add_argument("--layout", type=Path, help="existing AV-MNIST-layout files to use")
    p.add_argument("--rows", default="multibench",
                   help="multibench (55,000 + 5,000 / 10,000 rows, repeating samples), unique "
                        "(each sample once; mmfurnace only) or TRAIN,VALID,TEST row counts")
    p.add_argument("--epochs", default="1", help="comma-separated epoch counts, e.g. 1,5")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--override", action="append", default=[],
                   help="extra key=value for every mmfurnace run (repeatable)")
    p.add_argument("--multibench", type=Path, help="a checkout of pliang279/MultiBench")
    p.add_argument("--multibench-python", type=Path, default=Path(sys.executable),
                   help="Python of the environment with MultiBench's dependencies")
    p.add_argument("--speed-rounds", type=int, default=0,
                   help="interleaved speed rounds (0: none); each system trains --speed-steps "
                        "batches per round in its own process")
    p.add_argument("--speed-steps", type=int, default=200)
    p.add_argument("--speed-variants", default="mbsize-early")
    p.add_argument("--speed-worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerun", action="store_true", help="retrain runs whose results exist")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "avmnist-bench")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    if args.rows not in ("multibench", "unique") and len(args.rows.split(",")) != 3:
        p.error(f"--rows {args.rows!r}: multibench, unique or TRAIN,VALID,TEST")
    args.epochs = sorted({int(e) for e in args.epochs.split(",")})
    args.variants = [v for v in args.variants.split(",") if v]
    args.speed_variants = [v for v in args.speed_variants.split(",") if v]
    unknown = [v for v in args.variants + args.speed_variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.speed_worker:
        return speed_worker(args)
    args.out.mkdir(parents=True, exist_ok=True)
    layout = prepare_layout(args)
    machine = machine_info()
    print(f"CPU: {machine['cpu']['model']}; ISA {machine['cpu']['isa']}; "
          f"load {machine['load_average']}")
    results: dict[str, Any] = {"layout": str(layout), "epochs": args.epochs, "mmfurnace": {}}
    note = None
    mb_wanted = args.multibench is not None and args.rows != "unique"
    if args.multibench is None:
        note = "MultiBench: skipped (no --multibench checkout given)."
    elif not mb_wanted:
        note = "MultiBench: skipped (--rows unique: its loader needs 60,000 + 10,000 rows)."
    elif args.rows != "multibench":
        print("warning: MultiBench's own get_dataloader reads exactly 60,000 train and 10,000 "
              "test rows; other --rows counts work only with a loader that does not")
    # Alternate the systems: MultiBench first, then the variants, so drift hits both.
    if mb_wanted:
        results["multibench"] = run_multibench(args, layout, max(args.epochs))
    for variant in args.variants:
        for e in args.epochs:
            results["mmfurnace"].setdefault(variant, {})[str(e)] = run_mmfurnace(args, layout, variant, e)
    if args.speed_rounds:
        results["speed"] = run_speed(args, layout)
    rows = rows_for(results, args.epochs)
    print_table(rows, note)
    if "speed" in results:
        print_speed(results["speed"])
    payload = {"machine": machine, "settings": {k: str(v) for k, v in vars(args).items()},
               "rows": rows, "note": note, "raw": results}
    target = args.json or args.out / "avmnist_vs_multibench.json"
    target.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nJSON: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
