"""The run config: data + model + train sections, loaded from YAML with dotted overrides."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mmfurnace.data.config import DataConfig
from mmfurnace.models.config import ModelConfig
from mmfurnace.train.config import TrainConfig
from mmfurnace.typed_config import StrictModel, apply_overrides, load_yaml, parse


class RunConfig(StrictModel):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load ``path`` (or the defaults when None), apply ``key.path=value`` overrides, validate."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return parse(RunConfig, raw, source=str(path) if path else "config", overrides=overrides)
