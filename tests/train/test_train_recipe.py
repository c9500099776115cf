"""The training recipe end to end on tiny in-memory data: outputs, exact resume, bf16, errors."""

from __future__ import annotations

import json

import pytest
import torch

import mmfurnace.train.losses as loss_module
import mmfurnace.train.recipe as recipe
from mmfurnace.config import load_run_config
from mmfurnace.data.loader import make_loader
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.train.checkpoint import load_checkpoint, load_model
from mmfurnace.train.command import main as cli_main
from mmfurnace.train.evaluate import evaluate
from mmfurnace.train.logging import read_records
from mmfurnace.train.recipe import train
from tests.train.tinydata import tiny_datasets, tiny_run_config


class Crash(Exception):
    pass


def small_data(test: bool = True):
    data = tiny_datasets(train=24, valid=12, test=12)
    if not test:
        del data["test"]
    return data


def test_train_writes_checkpoints_logs_and_results(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_run_config(out, epochs=2, batch_size=8, modality_dropout={"audio": 0.3})
    datasets = small_data()
    result = train(cfg, progress=False, datasets=datasets)

    assert result.out_dir == out
    assert {p.name for p in out.iterdir()} >= {"last", "best", "metrics.jsonl", "tb", "results.json",
                                               "test_predictions.npz"}
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert load_checkpoint(out / "last").epoch == 2

    epochs = read_records(out / "metrics.jsonl", "epoch")
    steps = read_records(out / "metrics.jsonl", "step")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["step"] for r in steps] == [2, 4, 6]  # log_every=2, 3 steps per epoch
    for record in steps:
        assert set(record) >= {"total", "task", "consistency", "regularizer", "lr"}
    for record in epochs:
        assert set(record["train"]) == {"total", "task", "consistency", "regularizer"}
        assert set(record["val"]) >= {"accuracy", "macro_f1", "micro_f1", "loss"}
    assert epochs[1]["train"]["task"] < epochs[0]["train"]["task"]  # it learns

    results = json.loads((out / "results.json").read_text())
    test = results["test"]
    assert set(test) >= {"accuracy", "macro_f1", "micro_f1", "loss", "consistency", "per_modality_accuracy"}
    assert set(test["per_modality_accuracy"]) == {"audio", "image", "text"}
    assert results["params"] == sum(p.numel() for p in result.model.parameters())
    assert results["train_samples_per_s"] > 0
    assert results["epochs_run"] == 2
    assert results["steps"] == 6
    assert result.test_metrics == test

    # load_model + evaluate on the best checkpoint reproduces the test numbers (mmfurnace eval)
    model, meta = load_model(out / "best")
    assert meta.epoch == results["best_epoch"]
    loader = make_loader(datasets["test"], modalities=meta.info.modalities, batch_size=8, shuffle=False)
    rows: dict = {}
    again = evaluate(model, loader, "cpu", modalities=meta.info.modalities, outputs=rows)
    assert again["accuracy"] == test["accuracy"]
    assert again["per_modality_accuracy"] == test["per_modality_accuracy"]

    # the saved test predictions are best/'s logits for the test rows, in order
    saved = recipe.read_test_predictions(out)
    assert saved["logits"].shape == (12, 3)
    assert saved["logits"].dtype == "float32"
    assert saved["labels"].tolist() == [int(s.label) for s in datasets["test"].samples]
    torch.testing.assert_close(torch.from_numpy(saved["logits"]), rows["logits"])
    assert (saved["logits"].argmax(1) == saved["labels"]).mean() == pytest.approx(test["accuracy"])


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """4 epochs straight == crash in epoch 3, then --resume from last/ (epoch 2)."""
    def config(out):
        return tiny_run_config(out, epochs=4, batch_size=8, modality_dropout={"audio": 0.4, "text": 0.4})

    straight = train(config(tmp_path / "straight"), progress=False, datasets=small_data(test=False))

    real_loss = loss_module.total_loss
    calls = []

    def crash_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 3 + 2:  # 3 steps per epoch: the 2nd step of epoch 3
            raise Crash
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loss_module, "total_loss", crash_in_epoch_3)
    with pytest.raises(Crash):
        train(config(tmp_path / "resumed"), progress=False, datasets=small_data(test=False))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed" / "last").epoch == 2
    resumed = train(config(tmp_path / "resumed"), resume=True, progress=False, datasets=small_data(test=False))

    for name in ("last", "best"):
        a = load_checkpoint(tmp_path / "straight" / name)
        b = load_checkpoint(tmp_path / "resumed" / name)
        assert (a.epoch, a.step) == (b.epoch, b.step)
        assert a.weights.keys() == b.weights.keys()
        for key in a.weights:
            torch.testing.assert_close(a.weights[key], b.weights[key], atol=0, rtol=0, msg=key)
        torch.testing.assert_close(a.state["optimizer"], b.state["optimizer"], atol=0, rtol=0)
        assert a.state["scheduler"] == b.state["scheduler"]
        torch.testing.assert_close(a.state["rng"]["torch"], b.state["rng"]["torch"], atol=0, rtol=0)

    def without_times(history):
        return [{k: v for k, v in h.items() if k not in ("epoch_time_s", "samples_per_s")} for h in history]

    assert without_times(resumed.history) == without_times(straight.history)
    assert resumed.best_metrics == straight.best_metrics
    # the logs read as one run: each epoch and step once, the crashed epoch's lines dropped
    records = read_records(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3, 4]
    step_lines = [r["step"] for r in records if r["kind"] == "step"]
    assert step_lines == sorted(set(step_lines))


def test_bf16_autocast_with_grad_checkpointing_on_cpu(tmp_path, monkeypatch):
    seen = []
    real_loss = loss_module.total_loss

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return real_loss(logits, *args, **kwargs)

    monkeypatch.setattr(loss_module, "total_loss", spy)
    cfg = tiny_run_config(tmp_path / "run", epochs=1, batch_size=8, precision="bf16",
                          grad_checkpointing=True, consistency="infonce", alpha=0.5)
    result = train(cfg, progress=False, datasets=small_data(test=False))
    assert seen
    assert all(dtype == torch.bfloat16 for dtype in seen)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights fp32
    losses = result.history[0]["train"]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert all(enc.grad_checkpointing for enc in result.model.encoders.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_with_grad_scaler_on_cuda(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", epochs=2, batch_size=8, precision="fp16", device="cuda")
    result = train(cfg, progress=False, datasets=small_data())
    assert all(torch.isfinite(torch.tensor(h["train"]["total"])) for h in result.history)
    scaler_state = load_checkpoint(tmp_path / "run" / "last").state["scaler"]
    assert scaler_state["scale"] > 0  # the GradScaler was active and saved


def test_early_stopping(tmp_path):
    # a learning rate too small to change any prediction: accuracy never improves after epoch 1
    cfg = tiny_run_config(tmp_path / "run", epochs=5, batch_size=8, lr=1e-12,
                          early_stopping_patience=1, monitor="accuracy")
    result = train(cfg, progress=False, datasets=small_data(test=False))
    assert [h["epoch"] for h in result.history] == [1, 2]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["stopped_early"]
    assert results["best_epoch"] == 1
    # resuming a run that stopped early trains no further
    again = train(cfg, resume=True, progress=False, datasets=small_data(test=False))
    assert len(again.history) == 2


def test_improved_direction():
    assert recipe._improved(0.5, None, lower_is_better=False)
    assert recipe._improved(0.6, 0.5, lower_is_better=False)
    assert not recipe._improved(0.5, 0.5, lower_is_better=False)
    assert recipe._improved(0.4, 0.5, lower_is_better=True)


def test_fp16_on_cpu_is_a_clear_config_error(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*bf16"):
        train(cfg, progress=False, datasets=small_data())
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.alpha=-0.1", r"train\.alpha: Input should be greater than or equal to 0"),
        ("train.monitor=f1", r"train\.monitor: Input should be 'accuracy', 'macro_f1', 'micro_f1' or 'loss'"),
        ("train.modality_dropout.audio=1.0", r"train\.modality_dropout\.audio: Input should be less than 1"),
        ("train.consistency=cosine", r"train\.consistency"),
        ("train.epoch=3", r"train\.epoch: unknown key; allowed keys here: .*epochs"),
    ],
)
def test_bad_train_config_is_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [override])


def test_modality_dropout_for_a_modality_the_data_lacks(tmp_path):
    data = small_data()
    for dataset in data.values():
        dataset.info = dataset.info.__class__(**{**dataset.info.to_dict(), "modalities": ("audio", "image")})
    cfg = tiny_run_config(tmp_path / "run", modality_dropout={"text": 0.2})
    with pytest.raises(ConfigError, match="train.modality_dropout: text not among"):
        train(cfg, progress=False, datasets=data)


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", epochs=1, batch_size=12)
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        train(cfg, resume=True, progress=False, datasets=small_data(test=False))
    train(cfg, progress=False, datasets=small_data(test=False))
    with pytest.raises(InputError, match="already holds a run.*--resume"):
        train(cfg, progress=False, datasets=small_data(test=False))


def test_missing_split_is_an_input_error(tmp_path):
    data = small_data()
    del data["valid"]
    with pytest.raises(InputError, match="missing split.*valid"):
        train(tiny_run_config(tmp_path / "run"), progress=False, datasets=data)


def test_command_line_reports_errors_without_a_traceback(capsys):
    assert cli_main(["train.alpha=-1", "--no-progress"]) == 2
    assert "train.alpha" in capsys.readouterr().err
    assert cli_main(["train.precision=fp16", "train.device=cpu", "--no-progress"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
