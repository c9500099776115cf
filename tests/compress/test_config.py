"""Method configs are validated when built; bad requests are rejected with the field named."""

from __future__ import annotations

import pytest

from mmfurnace.compress import (
    ChannelConfig,
    DistillConfig,
    Int8StaticConfig,
    MagnitudeConfig,
    QATConfig,
    SensitivityConfig,
    compress,
)
from mmfurnace.compress.api import METHODS
from mmfurnace.compress.config import build_config
from mmfurnace.errors import ConfigError, InputError


@pytest.mark.parametrize("cls", [ChannelConfig, MagnitudeConfig])
@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, float("nan")])
def test_sparsity_outside_0_1_is_rejected_naming_the_field(cls, sparsity):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.sparsity"):
        cls(sparsity=sparsity)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Int8StaticConfig(calibration="kl"), "calibration"),
        (lambda: Int8StaticConfig(num_batches=0), "num_batches"),
        (lambda: Int8StaticConfig(percentile=101.0), "percentile"),
        (lambda: ChannelConfig(iterative_steps=0), "iterative_steps"),
        (lambda: ChannelConfig(importance="taylor"), "importance"),
        (lambda: MagnitudeConfig(scope="block"), "scope"),
        (lambda: SensitivityConfig(budget=-1.0), "budget"),
        (lambda: SensitivityConfig(granularity="model"), "granularity"),
        (lambda: QATConfig(freeze_observers_after=2.0), "freeze_observers_after"),
        (lambda: DistillConfig(temperature=0.0), "temperature"),
        (lambda: DistillConfig(width=0.0), "width"),
        (lambda: DistillConfig(fusion="lateish"), "fusion"),
    ],
)
def test_bad_values_name_the_field(build, field):
    with pytest.raises(ConfigError, match=field):
        build()


def test_unknown_method_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown compression method 'int4'.*int8-static.*prune-channel"):
        compress(tmp_path, "int4", out_dir=tmp_path / "out")


def test_unknown_option_lists_the_config_fields():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) sparsty; known: .*sparsity"):
        build_config(ChannelConfig, {"sparsty": 0.5}, method="prune-channel")


def test_finetune_shortcuts_set_the_nested_config():
    cfg = build_config(ChannelConfig, {"sparsity": 0.3, "finetune_epochs": 4, "lr": 1e-2}, method="prune-channel")
    assert (cfg.sparsity, cfg.finetune.epochs, cfg.finetune.lr) == (0.3, 4, 1e-2)


def test_every_method_builds_its_default_config():
    for name in METHODS.names():
        spec = METHODS[name]
        build_config(spec.config, dict(spec.defaults), method=name)


def test_directory_that_is_not_a_checkpoint_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a complete mmfurnace checkpoint"):
        compress(tmp_path, "int8-static", out_dir=tmp_path / "out")
    with pytest.raises(InputError, match="does not exist"):
        compress(tmp_path / "missing", "fp16", out_dir=tmp_path / "out")


def test_bad_option_is_rejected_before_the_checkpoint_is_read(tmp_path):
    # the config is validated first: a typo costs nothing, even on a missing checkpoint
    with pytest.raises(ConfigError, match="MagnitudeConfig.sparsity"):
        compress(tmp_path / "missing", "prune-unstructured", out_dir=tmp_path / "out", sparsity=1.0)


def test_runtime_option_and_its_old_name_backend():
    spec = METHODS["int8-dynamic"]
    assert build_config(spec.config, {"runtime": "torch"}, method="int8-dynamic").runtime == "torch"
    assert build_config(spec.config, {"backend": "torch"}, method="int8-dynamic").runtime == "torch"
    with pytest.raises(ConfigError, match="Int8DynamicConfig.runtime: 'tensorrt' is not one of"):
        build_config(spec.config, {"runtime": "tensorrt"}, method="int8-dynamic")
