"""Run config: YAML + dotted overrides, strict validation with errors naming the key."""

from pathlib import Path

import pytest

from mmfurnace.config import RunConfig, load_run_config
from mmfurnace.errors import ConfigError
from mmfurnace.typed_config import apply_overrides

REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_loads_and_overrides_apply():
    cfg = load_run_config(REPO / "configs/default.yaml", ["model.fusion=late", "train.epochs=3"])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.fusion == "late"
    assert cfg.train.epochs == 3
    assert cfg.data.modalities == ["audio", "image", "text"]


def test_override_values_are_parsed_as_yaml_not_evaluated():
    raw = apply_overrides({}, ["train.modality_dropout={image: 0.2}", "train.lr=1e-3", "x.y=__import__('os')"])
    assert raw["train"]["modality_dropout"] == {"image": 0.2}
    assert raw["train"]["lr"] == pytest.approx(1e-3)
    assert raw["x"]["y"] == "__import__('os')"  # a plain string, never run


def test_exponent_floats_are_numbers_everywhere(tmp_path):
    # YAML 1.1 wants a dot in a float: without our loader "3e-4" stays a string inside mappings
    raw = apply_overrides({}, ["finetune={lr: 3e-4, epochs: 2}", "lr=[1E-3, 2]", 'name="1e-3"'])
    assert raw == {"finetune": {"lr": 3e-4, "epochs": 2}, "lr": [1e-3, 2], "name": "1e-3"}
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n  epochs: 2\n", encoding="utf-8")
    assert load_run_config(path).train.lr == pytest.approx(3e-4)


def test_typo_in_key_names_the_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["train.epoch=3"])
    message = str(err.value)
    assert "train.epoch: unknown key" in message
    assert "epochs" in message  # the allowed keys are listed


def test_wrong_type_and_range_are_rejected():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_run_config(None, ["train.epochs=three"])
    with pytest.raises(ConfigError, match="train.alpha"):
        load_run_config(None, ["train.alpha=-0.5"])
    with pytest.raises(ConfigError, match="data.modalities"):
        load_run_config(None, ["data.modalities=[image, smell]"])


def test_unknown_fusion_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["model.fusion=telepathy"])
    assert "model.fusion" in str(err.value)
    assert "late" in str(err.value)
    assert "cross_attention" in str(err.value)


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_run_config(bad)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(missing)


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_a_bad_override_is_blamed_on_the_override_not_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_run_config(REPO / "configs/default.yaml", ["train.epoch=3"])
    message = str(err.value)
    assert "default.yaml: invalid override\n" in message
    assert "train.epoch: unknown key" in message
    assert message.endswith("[set by override 'train.epoch=3']")

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(bad, ["train.lr=-1"])
    lines = str(err.value).splitlines()
    assert lines[0] == f"{bad}: invalid config and overrides"
    assert any(ln.startswith("  train.lr:") and ln.endswith("[set by override 'train.lr=-1']") for ln in lines)
    assert any(ln.startswith("  train.epochz: unknown key") and ln.endswith(f"[in {bad}]") for ln in lines)

    with pytest.raises(ConfigError) as err:  # the file alone: no override blamed
        load_run_config(bad)
    assert str(err.value).startswith(f"{bad}: invalid config\n")
    assert "[set by override" not in str(err.value)


def test_a_section_override_is_blamed_for_the_keys_below_it():
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key.*\[set by override 'train=\{epoch: 3\}'\]"):
        load_run_config(None, ["train={epoch: 3}"])
