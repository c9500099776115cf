"""The recipe's command line on a packed on-disk copy of the tiny data, alone and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmfurnace.data.cache import pack_datasets
from mmfurnace.train.checkpoint import load_checkpoint
from mmfurnace.train.logging import read_records
from tests.train.tinydata import tiny_datasets, tiny_model_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    pack_datasets(base / "packed", tiny_datasets(train=16, valid=8, test=8))
    raw = {
        "data": {"dataset": "packed", "root": str(base / "packed"), "batch_size": 4},
        "model": tiny_model_config("early").model_dump(mode="json"),
        "train": {"epochs": 1, "lr": 0.005, "log_every": 1},
    }
    path = base / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(args: list[str], *, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_trains_then_resumes(tmp_path, config_file):
    out = tmp_path / "run"
    first = run(["-m", "mmfurnace.train", str(config_file), f"train.out_dir={out}", "--no-progress"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done:" in first.stdout
    assert load_checkpoint(out / "last").epoch == 1
    # --resume with more epochs continues the run
    more = run(["-m", "mmfurnace.train", str(config_file), f"train.out_dir={out}", "train.epochs=2",
                "--resume", "--no-progress"])
    assert more.returncode == 0, more.stderr[-3000:]
    assert load_checkpoint(out / "last").epoch == 2
    assert [r["epoch"] for r in read_records(out / "metrics.jsonl", "epoch")] == [1, 2]


@pytest.mark.slow
def test_torchrun_runs_the_same_recipe(tmp_path, config_file):
    out = tmp_path / "ddp"
    proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mmfurnace.train", str(config_file), f"train.out_dir={out}", "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["steps"] == 2  # 16 samples, 2 ranks, batches of 4
    assert set(results["test"]["per_modality_accuracy"]) == {"audio", "image", "text"}


def test_old_module_spelling_runs_the_one_entry_point():
    proc = run(["-m", "mmfurnace.train.recipe", "--help"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: python -m mmfurnace.train" in proc.stdout
    assert "RuntimeWarning" not in proc.stderr


def test_mmfurnace_train_and_module_share_one_main(monkeypatch, config_file):
    from typer.testing import CliRunner

    from mmfurnace.cli import app
    from mmfurnace.train import command

    calls = []

    def fake(config, overrides, *, resume=False, progress=True):
        calls.append((str(config), list(overrides), resume, progress))
        return 0

    monkeypatch.setattr(command, "run_training", fake)
    args = [str(config_file), "train.epochs=2", "--resume", "--no-progress"]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    assert command.main(args) == 0
    assert calls == [(str(config_file), ["train.epochs=2"], True, False)] * 2


def test_user_error_exits_2_without_traceback(capsys):
    from mmfurnace.train.command import run_training

    assert run_training(None, ["train.epocs=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "train.epocs: unknown key" in err
    assert "Traceback" not in err
