"""Which demo runs: tuxpaint with frozen pretrained encoders by default, digits-av on request;
bad choices are ConfigErrors naming them; a missing Tux Paint package names its install."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmfurnace.cli import app
from mmfurnace.config import load_run_config
from mmfurnace.demo import run_demo
from mmfurnace.demo_settings import DATASETS, demo_settings
from mmfurnace.errors import ConfigError, MissingDependencyError
from mmfurnace.train.ablation_report import encoder_start

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_demo_is_tuxpaint_on_frozen_pretrained_encoders():
    s = demo_settings()
    assert (s.dataset, s.pretrained, s.deploy) == ("tuxpaint", True, "late")
    cfg = load_run_config(ROOT / s.config)
    assert cfg.data.dataset == "tuxpaint"
    assert {m: (e.name, e.freeze) for m, e in cfg.model.encoders.items()} == {
        "audio": ("speech_embedding", True), "image": ("efficientnet_lite0", True),
        "text": ("minilm", True)}
    assert encoder_start(cfg) == "pretrained, frozen (audio, image, text)"
    # nothing re-runs EfficientNet: no image corruption but "missing"
    assert [c for m, c in s.corruptions if m == "image"] == ["missing"]
    assert [m for m, _ in s.compression] == ["int8-dynamic", "int8-static"]


def test_digits_av_keeps_the_scratch_demo_and_overrides_apply(tmp_path: Path):
    s = demo_settings("digits-av", report=tmp_path, seeds="0,1", epochs=2, skip=("profile",))
    assert (s.dataset, s.pretrained, s.config, s.data_root) == (
        "digits-av", False, Path("configs/default.yaml"), Path("data/digits-av"))
    assert (s.seeds, s.epochs, s.fusion_epochs, s.report, s.skip) == ((0, 1), 2, 5, tmp_path, ("profile",))
    assert s.corruptions is None
    assert len(s.compression) == 4
    cfg = load_run_config(ROOT / s.config)
    assert encoder_start(cfg) == "scratch"
    assert demo_settings("digits-av").seeds == (0, 1, 2)  # the preset itself is not changed
    assert DATASETS["digits-av"].report == Path("report")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dataset": "mnist"}, "unknown demo dataset 'mnist'; known: digits-av, tuxpaint"),
    ({"seeds": "0,x"}, "--seeds must be comma-separated integers"),
    ({"seeds": "1,1"}, "--seeds must list distinct integers"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"skip": ("trainig",)}, "--skip trainig: no such step"),
])
def test_bad_choices_are_config_errors_naming_them(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        demo_settings(**kwargs)


def test_the_command_line_reports_a_bad_dataset_without_a_traceback():
    result = CliRunner().invoke(app, ["demo", "--dataset", "mnist"])
    assert result.exit_code == 2
    assert "unknown demo dataset 'mnist'" in result.output
    assert "Traceback" not in result.output


def test_a_missing_tuxpaint_package_names_the_apt_command(tmp_path: Path):
    s = demo_settings(report=tmp_path / "report", data_root=tmp_path / "data")
    s.data_options = {"stamps": str(tmp_path / "no-stamps")}
    with pytest.raises(MissingDependencyError, match="apt-get install --no-install-recommends "
                       "tuxpaint-stamps-default"):
        run_demo(s)
