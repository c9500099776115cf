"""What ``mmfurnace demo`` runs, per dataset: ``tuxpaint`` (the default: real pictures, text and
speech through frozen pretrained encoders) or ``digits-av`` (tiny encoders trained from scratch,
the fast one the tests run).

:func:`demo_settings` picks a dataset's preset and applies the command line's overrides;
a wrong dataset name, seed list or epoch count is a ConfigError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmfurnace.errors import ConfigError

FUSIONS_COMPARED = ("early", "late", "cross_attention", "low_rank_tensor")
UNIMODAL = ("audio", "image", "text")

# The student: late fusion of narrow encoders (image CNN 4 -> 16 channels, one 16-wide audio
# conv block, 32-wide text transformer), about 3.6x fewer parameters than the cross-attention
# teacher. A student this small spends its time per graph node, not per FLOP: the second audio
# block cost 7 % of its latency and no accuracy. Narrower text, one image conv block or an MLP
# image encoder ran faster but lost 7-13 points (README, compression notes).
STUDENT = {"fusion": "late", "hidden_dim": 32, "proj_dim": 16,
           "encoders": {"image": {"channels": 4, "dim": 32}, "audio": {"dim": 16, "layers": 1},
                        "text": {"dim": 32}}}

DIGITS_COMPRESSION: tuple[tuple[str, dict[str, Any]], ...] = (
    ("int8-dynamic", {}),
    ("int8-static", {"calibration": "entropy"}),
    # three prune + fine-tune rounds against the unpruned parent: one 50 % cut lost 3-5 points
    ("prune-channel", {"sparsity": 0.5, "iterative_steps": 3, "distill": True, "finetune_epochs": 10}),
    ("distill", {"student": STUDENT, "finetune_epochs": 30}),
)

# Pruning and distillation fine-tune the whole model, which re-runs EfficientNet on every
# image of every epoch (>= 20 min on 2 cores); the pretrained demo compresses by INT8 only.
# min-max calibration: entropy histograms over every activation of a 27 M-parameter model
# cost minutes and gained nothing on the digits-av model (README, Compression). 8 batches (the
# method's default): with 4 the ranges of the label-smoothed late model moved enough to flip 2
# of 141 test stamps (-1.42 pt, gate FAILED), with 8 none (README, The demo).
PRETRAINED_COMPRESSION: tuple[tuple[str, dict[str, Any]], ...] = (
    ("int8-dynamic", {}),
    ("int8-static", {"calibration": "minmax", "num_batches": 8}),
)

# Corruptions that do not re-run EfficientNet (~190 ms an image on this CPU): a missing
# modality on any of them, and the audio and text corruptions, whose encoders cost 5-10x less.
PRETRAINED_CORRUPTIONS = (
    ("audio", "missing"), ("image", "missing"), ("text", "missing"),
    ("audio", "white"), ("audio", "dropout"), ("text", "unk"), ("text", "drop"),
)


@dataclass
class DemoSettings:
    """What the demo runs. ``quick`` shrinks everything for the end-to-end test.

    dataset: which built-in dataset (``DATASETS``); config/data_root: its run config and folder.
    pretrained: the encoders are frozen pretrained ones: a feature-cache step before training,
    no warm start (nothing of them trains), a probe row, robustness on cached features.
    deploy: the fusion whose first-seed model is compressed, exported, served and profiled.
    corruptions: None for every registered one; levels: the corruption levels measured.
    """

    dataset: str = "digits-av"
    config: Path = Path("configs/default.yaml")
    data_root: Path = Path("data/digits-av")
    report: Path = Path("report")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 12  # unimodal baselines: their accuracy has levelled off by then
    fusion_epochs: int = 5  # fusion models, whose encoders start from those baselines
    limit_per_class: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    quick: bool = False
    pretrained: bool = False
    deploy: str = "cross_attention"
    corruptions: tuple[tuple[str, str], ...] | None = None
    levels: tuple[float, ...] = (0.0, 0.33, 0.67, 1.0)  # keep the curve's shape, and the time
    compression: tuple[tuple[str, dict[str, Any]], ...] = DIGITS_COMPRESSION
    compression_rounds: int = 20
    compression_openvino: bool | None = None  # None: INT8 variants on OpenVINO too, when installed
    engine_batches: tuple[int, ...] = (1, 8, 32, 128)
    engine_iters: int = 20
    engine_runtimes: tuple[str, ...] | None = None  # None: every available one
    parity_rows: int = 64  # real validation rows every runtime must match eager on
    serve_load: tuple[str, str] = ("6", "600")  # seconds, requests of benchmarks/serve_load.py
    serve_variants: str = "a,b,c,d"  # its variants (a: eager one at a time ... d: split encoders)
    serve_clients: int = 64
    profile_steps: int = 20
    profile_batch: int | None = None  # None: the run config's batch size
    profile_mode: str = "both"  # train, inference or both
    sections: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def quick_settings(cls, root: Path) -> DemoSettings:
        return cls(data_root=root / "data", report=root / "report", seeds=(0,), epochs=1,
                   fusion_epochs=1, limit_per_class=4, quick=True, levels=(0.0, 0.5, 1.0),
                   compression_rounds=3, engine_batches=(1, 32), engine_iters=4,
                   serve_load=("2", "100"), profile_steps=3)


# Measured on 2 cores (README, The demo): the feature cache takes ~6 min of the budget, an
# epoch of all seven rows on cached features ~15 s under load. One seed, 10 epochs: the seed
# spread and the 60-epoch accuracies are in the README's table (benchmarks/real_results.py).
TUXPAINT = DemoSettings(
    dataset="tuxpaint", config=Path("configs/tuxpaint-pretrained.yaml"),
    data_root=Path("data/tuxpaint-224"), seeds=(0,), epochs=10, fusion_epochs=10,
    pretrained=True, deploy="late", corruptions=PRETRAINED_CORRUPTIONS, levels=(0.0, 0.5, 1.0),
    # OpenVINO still runs the FP32 export in the engines step; its INT8 rows would add a model
    # compile and an accuracy pass per variant
    compression=PRETRAINED_COMPRESSION, compression_rounds=3, compression_openvino=False,
    engine_batches=(1, 8),
    # torch.compile left out: compiling EfficientNet + MiniLM + speech_embedding takes minutes
    engine_iters=2, engine_runtimes=("eager", "torchscript", "onnxruntime", "openvino"), parity_rows=16,
    # eager one request at a time vs the default config (ONNX Runtime, dynamic batching): every
    # variant loads the 100 MB model into its own worker processes. 8 clients: at 64 the
    # admission gate answered 503 to 85 % of requests (a model call is 30-80 ms, not 1)
    serve_load=("4", "120"), serve_variants="a,c", serve_clients=8, profile_steps=3,
    # inference only: training runs on cached features, which the profile does not use (it would
    # time a step through the frozen backbones that no training run takes)
    profile_batch=8, profile_mode="inference",
)
DATASETS: dict[str, DemoSettings] = {"tuxpaint": TUXPAINT, "digits-av": DemoSettings()}
DEFAULT_DATASET = "tuxpaint"


def demo_settings(
    dataset: str = DEFAULT_DATASET,
    *,
    report: Path | None = None,
    data_root: Path | None = None,
    epochs: int | None = None,
    fusion_epochs: int | None = None,
    seeds: str | tuple[int, ...] | None = None,
    skip: tuple[str, ...] = (),
) -> DemoSettings:
    """``dataset``'s preset with the given values in place of its own (None keeps them)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown demo dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
    changes: dict[str, Any] = {"skip": tuple(skip), "sections": {}, "data_options": {}}
    for name, value in (("report", report), ("data_root", data_root)):
        if value is not None:
            changes[name] = Path(value)
    for name, value in (("epochs", epochs), ("fusion_epochs", fusion_epochs)):
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
            changes[name] = value
    if seeds is not None:
        changes["seeds"] = parse_seeds(seeds)
    unknown = sorted(set(skip) - set(STEPS))
    if unknown:
        raise ConfigError(f"--skip {', '.join(unknown)}: no such step; steps: {', '.join(STEPS)}")
    return replace(DATASETS[dataset], **changes)


def parse_seeds(seeds: str | tuple[int, ...]) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); an empty, repeated or non-integer list is a ConfigError."""
    if isinstance(seeds, str):
        try:
            seeds = tuple(int(x) for x in seeds.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must list distinct integers, got {seeds}")
    return tuple(seeds)


STEPS = ("data", "features", "fusion", "robustness", "compression", "engines", "serving", "profile")
