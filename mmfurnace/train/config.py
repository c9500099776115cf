"""Config of the train section: loss weights, optimisation, precision, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from mmfurnace.modalities import Modality
from mmfurnace.typed_config import FieldError, StrictModel


class TrainConfig(StrictModel):
    epochs: int = Field(15, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    encoder_lr: float | None = Field(
        None, gt=0, description="learning rate of the encoders' trainable blocks (unfreeze_top, "
        "freeze: false); None: lr. Fine-tuning a pretrained block wants a smaller one"
    )
    warmup_epochs: float | None = Field(
        None, ge=0, description="linear warmup length in epochs; None: a tenth of the run, at "
        "most one epoch (so a 1-epoch run warms up for 10% of its steps, then decays)"
    )
    alpha: float = Field(0.1, ge=0, description="weight of the cross-modal consistency term")
    beta: float = Field(1e-4, ge=0, description="weight of the modality-specific L2 term")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="share of the task target spread over all classes (multi-"
        "label: each 0/1 target moved that share towards 1/2); the valid and test losses stay "
        "unsmoothed"
    )
    consistency: Literal["mse", "infonce"] = "mse"
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    modality_dropout: dict[Modality, Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=dict,
        description="per-modality probability of marking it absent in a training row "
        "(a row never loses all of its modalities)",
    )
    init_encoders: dict[Modality, Path] = Field(
        default_factory=dict,
        description="modality -> checkpoint folder whose encoder of that modality starts this "
        "run (e.g. a unimodal run's best/); the fusion and head start fresh",
    )
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    clip_grad_norm: float | None = Field(1.0, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    monitor: Literal["accuracy", "macro_f1", "micro_f1", "loss"] = "accuracy"
    seed: int = 0
    device: str = "auto"
    # Small models on a shared CPU step many times faster on one intra-op thread than on
    # several contended ones (measured 26 vs 705 ms/step for the audio CNN on 2 busy cores).
    # None keeps torch's default (use it on a GPU box or a quiet many-core CPU).
    threads: int | None = Field(1, ge=1)
    feature_cache: bool = Field(
        True, description="compute the outputs of wholly frozen encoders once, into "
        "feature_cache_dir, and train on them (models/feature_cache.py)"
    )
    feature_cache_dir: Path = Path("cache/features")
    feature_threads: int | None = Field(
        None, ge=1, description="torch threads for building the feature cache (None: one per "
        "CPU core)"
    )
    out_dir: Path = Path("runs/default")
    log_every: int = Field(20, gt=0)

    @model_validator(mode="after")
    def _warmup_ends_before_the_run(self) -> TrainConfig:
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise FieldError(
                ("warmup_epochs",),
                f"{self.warmup_epochs:g} epochs of warmup cover the whole run (epochs "
                f"{self.epochs}): the learning rate would never reach its peak and decay; "
                "set a shorter warmup, or leave it unset for a tenth of the run",
            )
        return self
