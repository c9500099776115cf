"""The profiler: stages add up to the measured step, traces are valid, the diagnosis names the
stage made slow on purpose, and profile_checkpoint writes its files."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mmfurnace.bench.profile import (
    OTHER,
    ProfileReport,
    diagnose,
    plot_stages,
    profile_checkpoint,
    profile_inference,
    profile_training,
)
from mmfurnace.data.batch import Sample
from mmfurnace.data.loader import make_loader
from mmfurnace.models import build_model
from mmfurnace.train.checkpoint import save_checkpoint
from tests.train.tinydata import INFO, TinyDataset, tiny_model_config, tiny_run_config


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_model_config("late"), INFO)


def _loader(dataset: Dataset, batch_size: int = 8):
    return make_loader(dataset, modalities=INFO.modalities, batch_size=batch_size, shuffle=False)


class SleepyDataset(Dataset):
    """TinyDataset whose every sample takes ``seconds`` to load."""

    def __init__(self, seconds: float) -> None:
        self.inner = TinyDataset(32, seed=3)
        self.info = self.inner.info
        self.seconds = seconds

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Sample:
        time.sleep(self.seconds)
        return self.inner[i]


class SlowEncoder(nn.Module):
    """Wraps an encoder and sleeps in every forward."""

    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds, self.out_dim = inner, seconds, inner.out_dim

    def forward(self, x, valid=None):
        time.sleep(self.seconds)
        return self.inner(x, valid)


class AutocastProbe(nn.Module):
    """Wraps an encoder and records, per forward, whether CPU autocast is on and its dtype."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.out_dim, self.seen = inner, inner.out_dim, []

    def forward(self, x, valid=None):
        on = torch.is_autocast_enabled("cpu")
        self.seen.append((on, torch.get_autocast_dtype("cpu") if on else None))
        return self.inner(x, valid)


def _assert_adds_up(report: ProfileReport) -> None:
    # Batches of 64 make a step long enough that one preemption of this process by a busy
    # neighbour, landing outside the stages, cannot move the sum by 10%.
    ms = report.stage_ms()
    stage_sum = sum(v for k, v in ms.items() if k != OTHER)
    assert abs(stage_sum - report.total_ms) <= 0.10 * report.total_ms, (stage_sum, report.total_ms)
    assert ms[OTHER] == pytest.approx(report.total_ms - stage_sum)
    assert report.to_dict()["other_ms"] == pytest.approx(ms[OTHER])


def test_training_stages_add_up_to_the_measured_step():
    report = profile_training(_model(), _loader(TinyDataset(64, seed=1), batch_size=64), steps=12, warmup=1, profile_steps=0)
    assert list(report.stage_seconds) == [
        "data", "h2d", "encoder.audio", "encoder.image", "encoder.text", "fusion", "loss", "backward", "optimizer",
    ]
    assert all(len(v) == 12 for v in report.stage_seconds.values())
    assert len(report.step_seconds) == 12
    _assert_adds_up(report)
    assert report.rows_per_step == 64


def test_training_changes_the_weights_and_restores_the_mode():
    model = _model().eval()
    before = [p.detach().clone() for p in model.parameters()]
    profile_training(model, _loader(TinyDataset(16, seed=1)), steps=2, warmup=0, profile_steps=0)
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(("precision", "expected"), [("bf16", (True, torch.bfloat16)), ("fp32", (False, None))])
def test_training_profile_runs_the_recipes_step_in_the_runs_precision(precision, expected):
    from mmfurnace.train.config import TrainConfig

    model = _model()
    probe = model.encoders["image"] = AutocastProbe(model.encoders["image"])
    report = profile_training(model, _loader(TinyDataset(16, seed=1)), steps=2, warmup=1, profile_steps=0,
                              train=TrainConfig(precision=precision, modality_dropout={"audio": 0.5}))
    assert probe.seen == [expected] * 3  # warm-up + 2 timed steps, each under the run's autocast
    assert list(report.stage_seconds)[:3] == ["data", "h2d", "encoder.audio"]


def test_inference_stages_add_up_and_flops_are_reported():
    report = profile_inference(_model(), _loader(TinyDataset(64, seed=1), batch_size=64), steps=12, warmup=1, profile_steps=0, peak_flops=1e12)
    assert "backward" not in report.stage_seconds
    _assert_adds_up(report)
    assert report.flops["flops_per_step"] > 0
    assert 0 < report.flops["utilization"] < 1
    assert report.flops["achieved_flops_per_s"] == pytest.approx(report.flops["utilization"] * 1e12)


def test_trace_is_valid_json_with_stage_events(tmp_path):
    trace = tmp_path / "trace.json"
    report = profile_training(_model(), _loader(TinyDataset(16, seed=1)), steps=2, warmup=1, profile_steps=1, trace_path=trace, top_n=5)
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert len(events) > 10
    assert {"mmfurnace::encoder.text", "mmfurnace::backward", "mmfurnace::train_step"} <= names
    assert report.trace_path == str(trace)
    assert 0 < len(report.top_ops) <= 5
    assert all(o["self_cpu_ms"] >= 0 and o["calls"] >= 1 for o in report.top_ops)
    assert "Self CPU" in report.op_table


def test_diagnosis_names_slow_data_loading():
    loader = _loader(SleepyDataset(0.004), batch_size=8)  # ~32 ms of loading per step
    report = profile_inference(_model(), loader, steps=3, warmup=1, profile_steps=0, count=False)
    assert report.diagnosis.startswith("data loading is ")
    assert "data.num_workers (now 0)" in report.diagnosis
    assert report.data_wait_share > 0.5


def test_diagnosis_names_a_slow_encoder():
    model = _model()
    model.encoders["text"] = SlowEncoder(model.encoders["text"], 0.03)
    report = profile_inference(model, _loader(TinyDataset(16, seed=1)), steps=3, warmup=1, profile_steps=0, count=False)
    assert report.diagnosis.startswith("the text encoder is ")
    assert "of compute" in report.diagnosis
    assert "model.encoders.text" in report.diagnosis


def test_diagnosis_of_a_frozen_encoder():
    model = _model()
    model.encoders["text"] = SlowEncoder(model.encoders["text"], 0.03)
    model.encoders["text"].requires_grad_(False)
    report = profile_inference(model, _loader(TinyDataset(16, seed=1)), steps=3, warmup=1, profile_steps=0, count=False)
    assert report.frozen == ["text"]
    assert report.diagnosis.startswith("the text encoder is ")
    assert "it is frozen: serve it INT8" in report.diagnosis
    assert "model.encoders.text.dim" not in report.diagnosis  # a pretrained backbone's size is no knob
    report.mode = "train"
    assert "train.feature_cache=true" in diagnose(report)


def test_diagnosis_sentence_per_stage():
    def report(**ms: float) -> ProfileReport:
        stages = {k.replace("__", "."): [v / 1e3] for k, v in ms.items()}
        return ProfileReport("train", "cpu", 1, 8, stages, [sum(ms.values()) / 1e3], {}, num_workers=2)

    assert diagnose(report(data=63, backward=37)).startswith("data loading is 63% of the step: raise data.num_workers (now 2)")
    assert diagnose(report(data=10, encoder__audio=20, backward=70)).startswith("backward is 78% of compute")
    assert diagnose(report(data=0, fusion=60, loss=40)).startswith("fusion + head is 60% of compute")


def test_report_outputs(tmp_path):
    report = profile_training(_model(), _loader(TinyDataset(16, seed=1)), steps=3, warmup=0, profile_steps=1)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["stages"]["data"]["share"] + d["stages"][OTHER]["share"] <= 1
    assert sum(s["share"] for s in d["stages"].values()) == pytest.approx(1.0)
    assert d["memory"]["host_peak_rss_mib"] > 0
    md = report.to_markdown()
    assert "| the text encoder |" in md
    assert report.diagnosis in md
    png = plot_stages([report, report], tmp_path / "stages.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_checkpoint_writes_everything(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", fusion="late")
    model = build_model(cfg.model, INFO)
    ckpt = save_checkpoint(
        tmp_path / "ckpt", model=model, optimizer=None, scheduler=None, scaler=None, epoch=1, step=1,
        rng_states=None, config=cfg.model_dump(mode="json"), info=INFO, metrics={},
    )
    out = tmp_path / "profile"
    result = profile_checkpoint(
        ckpt, data_cfg_overrides=["data.batch_size=4", "audio.max_seconds=0.1"], steps=2, out_dir=out,
        synthetic=True, warmup=1, profile_steps=1, peak_size=64,
    )
    for name in ("profile.json", "profile.md", "trace.json", "trace_inference.json", "stages.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "profile.json").read_text())
    assert saved["train"]["rows_per_step"] == 4
    assert saved["inference"]["rows_per_step"] == 4
    assert saved["inference"]["flops"]["utilization"] > 0
    assert saved["settings"]["data"]["audio"]["max_seconds"] == 0.1
    assert saved["machine"]["cpu"]["logical_cores"] >= 1
    assert result["train"]["diagnosis"] == saved["train"]["diagnosis"]
    assert json.loads((out / "trace.json").read_text())["traceEvents"]


def test_bad_arguments_are_clear_errors(tmp_path):
    from mmfurnace.errors import InputError

    with pytest.raises(InputError, match="no batches"):
        profile_inference(_model(), [], steps=1, warmup=0, profile_steps=0)
    with pytest.raises(InputError, match="mode"):
        profile_checkpoint(tmp_path, mode="fast", out_dir=tmp_path / "o")
