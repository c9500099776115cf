"""Does the scale of frozen features decide fusion accuracy? Raw vs standardised pooled features,
for the logistic-regression probe and for a one-hidden-layer MLP on the concatenated features.

    python benchmarks/feature_scale.py [--config configs/tuxpaint-pretrained.yaml] [--seeds 0,1,2]

Reads the feature cache of the config's frozen encoders (run benchmarks/real_results.py or
`mmfurnace train CONFIG` first; nothing is encoded here). The MLP is an early fusion without
anything else: concat -> Linear(hidden) -> ReLU -> Dropout(0.1) -> Linear(classes), AdamW (lr
1e-3, weight decay 0.01), batch 32, the config's epochs, test accuracy at the best valid epoch.
"Standardised" = each feature minus its train mean, over its train std (train/probe.py); an
absent modality is zeros either way. Prints per-modality feature statistics and the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mlp_accuracy(x: dict, y: dict, *, classes: int, hidden: int, epochs: int, seed: int) -> float:
    """Test accuracy at the epoch of best valid accuracy."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x["train"].shape[1], hidden), nn.ReLU(), nn.Dropout(0.1),
                        nn.Linear(hidden, classes))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    best_valid, test_at_best = -1.0, 0.0
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(y["train"]))
        for i in range(0, len(order), 32):
            rows = order[i:i + 32]
            opt.zero_grad()
            F.cross_entropy(net(x["train"][rows]), y["train"][rows]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            valid = (net(x["valid"]).argmax(1) == y["valid"]).float().mean().item()
            test = (net(x["test"]).argmax(1) == y["test"]).float().mean().item()
        if valid > best_valid:
            best_valid, test_at_best = valid, test
    return test_at_best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/tuxpaint-pretrained.yaml"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args(argv)

    from mmfurnace.config import load_run_config
    from mmfurnace.errors import MMFurnaceError
    from mmfurnace.train.probe import cached_pooled, design_matrix, run_probe, standardizer

    cfg = load_run_config(args.config, args.override)
    try:
        pooled = cached_pooled(cfg, build=False)
    except MMFurnaceError as err:
        print(f"error: {err} (run benchmarks/real_results.py or `mmfurnace train` on this "
              "config first)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    modalities = sorted(pooled["train"].features)
    print("| modality | dim | mean abs value | per-feature std (min / median / max) |")
    print("|---|---|---|---|")
    for m in modalities:
        rows = pooled["train"].features[m][pooled["train"].present[m]]
        std = rows.std(0)
        print(f"| {m} | {rows.shape[1]} | {rows.abs().mean():.3f} | "
              f"{std.min():.3g} / {std.median():.3g} / {std.max():.3g} |")
    mean, std = standardizer(pooled["train"], modalities)
    classes = 1 + int(max(int(s.labels.max()) for s in pooled.values()))
    seeds = [int(s) for s in args.seeds.split(",")]
    print("\n| features | probe test % | MLP test % (mean ± std over seeds) |\n|---|---|---|")
    for name, (m0, s0) in {"raw": (torch.zeros_like(mean), torch.ones_like(std)),
                           "standardised": (mean, std)}.items():
        x = {k: design_matrix(pooled[k], modalities, m0, s0) for k in ("train", "valid", "test")}
        y = {k: pooled[k].labels for k in x}
        probe_acc = run_probe(pooled, modalities, num_classes=classes,
                              standardize=name == "standardised").test["accuracy"]
        accs = [mlp_accuracy(x, y, classes=classes, hidden=cfg.model.hidden_dim,
                             epochs=cfg.train.epochs, seed=s) for s in seeds]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {name} | {100 * probe_acc:.2f} | {100 * statistics.fmean(accs):.2f} ± {100 * spread:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
