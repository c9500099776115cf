"""The demo's steps that only a model on frozen pretrained encoders has: the feature cache,
built once before anything trains, and the logistic-regression probe on it (the baseline a
user tries first), written under the fusion table. Nothing imports this module but demo.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from mmfurnace.config import RunConfig
from mmfurnace.data.manifest import SPLITS
from mmfurnace.demo_settings import DemoSettings


def build_feature_cache(base: RunConfig, s: DemoSettings, console: Console) -> Path:
    """Find or build the cache entry of each frozen encoder of ``base`` (a progress bar per
    encoder being run) and write ``features.md``: the entries, seconds and inputs encoded."""
    from mmfurnace.data.datasets import build_dataset
    from mmfurnace.models.feature_cache import cache_features, feature_progress
    from mmfurnace.threads import torch_threads
    from mmfurnace.train.probe import seeded_model

    splits = {split: build_dataset(base.data, split) for split in SPLITS}
    model = seeded_model(base, splits["train"].info)  # type: ignore[attr-defined]
    threads = base.train.feature_threads or os.cpu_count() or 1
    started = time.perf_counter()
    with torch_threads(threads), feature_progress(True) as report:
        cache = cache_features(model, splits, cache_dir=base.train.feature_cache_dir,
                               batch_size=base.data.batch_size, progress=report)
    total = time.perf_counter() - started
    lines = ["# Frozen-feature cache", "",
             f"Each frozen encoder ran once over the {sum(len(d) for d in splits.values())} samples "  # type: ignore[arg-type]
             f"of every split ({threads} torch threads; {total:.0f} s in all); every training run, "
             "the probe and the robustness step read these entries and hash their inputs only.", "",
             "| modality | encoder | entry | found | build s | inputs encoded | hashing s |",
             "|---|---|---|---|---|---|---|"]
    for m, st in sorted(cache.stats.items()):
        name = base.model.encoders[m].name if m in base.model.encoders else "?"
        lines.append(f"| {m} | {name} | `{Path(st['entry']).name}` | {'yes' if st['hit'] else 'no'} "
                     f"| {st['build_s']:.1f} | {st['encoded']} | {st['fingerprint_s']:.1f} |")
        console.print(f"{m} ({name}): {'found' if st['hit'] else 'built'} in "
                      f"{st['build_s'] + st['fingerprint_s']:.1f} s, {st['encoded']} inputs encoded")
    out = s.report / "features.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def append_probe(base: RunConfig, table: Path, console: Console) -> None:
    """Fit the logistic-regression probe on the concatenated cached features of every modality
    (train/probe.py: L2 picked on valid, deterministic) and add its row under ``table``."""
    from mmfurnace.train.probe import cached_pooled, run_probe

    started = time.perf_counter()
    pooled = cached_pooled(base, build=False)
    modalities = sorted(base.data.modalities)
    result = run_probe(pooled, modalities)
    seconds = time.perf_counter() - started
    params = result.linear.weight.numel() + result.linear.bias.numel()
    row = (f"| probe-concat | {', '.join(modalities)} | logistic regression | pretrained, frozen "
           f"(cached features) | — | {result.test['accuracy']:.4f} ± 0.0000 "
           f"| {result.test['macro_f1']:.4f} ± 0.0000 | {params} + the frozen encoders | {params} "
           f"| {seconds:.1f} | 1/1 |")
    note = (f"\nprobe-concat: a multinomial logistic regression on the pooled cached features of "
            f"{', '.join(modalities)}, standardised with train statistics; weight decay "
            f"{result.weight_decay:g} picked on valid (accuracy {result.valid['accuracy']:.4f}). "
            "Convex and deterministic: no seed spread.\n")
    text = table.read_text(encoding="utf-8")
    lines = text.rstrip("\n").split("\n")
    last = max(i for i, line in enumerate(lines) if line.startswith("| "))
    lines.insert(last + 1, row)
    table.write_text("\n".join(lines) + "\n" + note, encoding="utf-8")
    console.print(f"probe on concatenated features: test accuracy {result.test['accuracy']:.4f} "
                  f"({seconds:.0f} s)")
