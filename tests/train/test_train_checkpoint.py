"""Checkpoints: round trip, weights_only loading, atomic saves under a crash, clear errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import mmfurnace.train.checkpoint as checkpoint
from mmfurnace.errors import InputError
from mmfurnace.models import build_model
from mmfurnace.train.checkpoint import (
    capture_rng_states,
    is_checkpoint,
    load_checkpoint,
    load_model,
    restore_rng_states,
    save_checkpoint,
)
from mmfurnace.train.precision import make_scaler
from mmfurnace.train.schedule import build_optimizer, warmup_cosine
from tests.train.tinydata import INFO, tiny_run_config


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A real tiny model with one optimiser step taken, and what save_checkpoint needs."""
    torch.manual_seed(0)
    cfg = tiny_run_config(tmp_path_factory.mktemp("run"))
    model = build_model(cfg.model, INFO)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.01)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=10)
    inputs = {"image": torch.randn(4, 1, 8, 8)}
    present = {m: torch.ones(4, dtype=torch.bool) if m == "image" else torch.zeros(4, dtype=torch.bool)
               for m in INFO.modalities}
    model(inputs, present).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": make_scaler("fp32", torch.device("cpu")),
        "config": cfg.model_dump(mode="json"),
        "info": INFO,
    }


def save(directory, parts, epoch):
    return save_checkpoint(directory, epoch=epoch, step=epoch * 3, rng_states=capture_rng_states(),
                           metrics={"accuracy": 0.5 + epoch / 10}, best_metric=0.5, bad_epochs=1,
                           extra={"history": [{"epoch": epoch}]}, **parts)


def weights_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_round_trip(tmp_path, parts):
    save(tmp_path / "ck", parts, epoch=2)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(checkpoint.FILES)
    ck = load_checkpoint(tmp_path / "ck")
    assert (ck.epoch, ck.step, ck.metrics["accuracy"]) == (2, 6, 0.7)
    assert ck.info == INFO
    assert ck.state["best_metric"] == 0.5
    assert ck.state["bad_epochs"] == 1
    assert ck.state["extra"]["history"] == [{"epoch": 2}]
    assert ck.meta["format_version"] == checkpoint.FORMAT_VERSION
    state = parts["model"].state_dict()
    assert set(ck.weights) <= set(state)
    for name, tensor in ck.weights.items():
        torch.testing.assert_close(tensor, state[name], atol=0, rtol=0)
    restored = build_optimizer(parts["model"], lr=1.0, weight_decay=0.0)
    restored.load_state_dict(ck.state["optimizer"])  # the saved optimiser state is usable
    assert restored.param_groups[0]["lr"] == parts["optimizer"].param_groups[0]["lr"]


def test_state_loads_with_weights_only(tmp_path, parts):
    save(tmp_path / "ck", parts, epoch=1)
    state = torch.load(tmp_path / "ck" / "state.pt", weights_only=True)
    assert state["rng"]["numpy"]["keys"].dtype == torch.int64
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert meta["info"]["num_classes"] == INFO.num_classes


def test_rng_states_round_trip_through_a_checkpoint(tmp_path, parts):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    save(tmp_path / "ck", parts, epoch=1)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_states(load_checkpoint(tmp_path / "ck").state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    torch.testing.assert_close(got[2], expected[2], atol=0, rtol=0)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, parts, monkeypatch):
    directory = tmp_path / "last"
    save(directory, parts, epoch=1)
    before = weights_of(parts["model"])
    with torch.no_grad():  # the next save would hold different weights
        for p in parts["model"].parameters():
            p.add_(1.0)

    def crash(*args, **kwargs):  # the weights file is written, the training state never is
        raise Crash("power cut after the first file")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(Crash):
        save(directory, parts, epoch=2)
    monkeypatch.undo()

    ck = load_checkpoint(directory)  # the previous checkpoint, whole
    assert ck.epoch == 1
    for name, tensor in ck.weights.items():
        torch.testing.assert_close(tensor, before[name], atol=0, rtol=0)
    # and the next save succeeds over the debris of the crashed one
    save(directory, parts, epoch=2)
    assert load_checkpoint(directory).epoch == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_crash_between_the_directory_renames_is_recovered(tmp_path, parts):
    directory = tmp_path / "last"
    save(directory, parts, epoch=3)
    directory.rename(tmp_path / ".last.old")  # the instant after "rename old away"
    assert is_checkpoint(directory)
    assert load_checkpoint(directory).epoch == 3


def test_errors_name_the_path_and_what_is_missing(tmp_path, parts):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty.*missing model\.safetensors, state\.pt, meta\.json, complete"):
        load_checkpoint(tmp_path / "empty")
    save(tmp_path / "ck", parts, epoch=1)
    (tmp_path / "ck" / "state.pt").unlink()
    with pytest.raises(InputError, match=r"state\.pt"):
        load_checkpoint(tmp_path / "ck")


def test_format_version_mismatch_is_refused(tmp_path, parts):
    save(tmp_path / "ck", parts, epoch=1)
    meta_path = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"meta\.json.*version 99"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(InputError, match="version 99"):
        load_model(tmp_path / "ck")


def test_corrupt_state_is_an_input_error(tmp_path, parts):
    save(tmp_path / "ck", parts, epoch=1)
    (tmp_path / "ck" / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"state\.pt"):
        load_checkpoint(tmp_path / "ck")


def test_pickled_code_is_not_loaded(tmp_path, parts):
    save(tmp_path / "ck", parts, epoch=1)
    state = torch.load(tmp_path / "ck" / "state.pt", weights_only=True)
    state["extra"] = {"evil": Crash("arbitrary object")}  # not weights_only-safe
    torch.save(state, tmp_path / "ck" / "state.pt")
    with pytest.raises(InputError, match="cannot read training state"):
        load_checkpoint(tmp_path / "ck")


def test_load_model_rebuilds_the_same_model(tmp_path, parts):
    save(tmp_path / "ck", parts, epoch=1)
    model, meta = load_model(tmp_path / "ck")
    assert not model.training
    assert meta.info == INFO
    assert meta.epoch == 1
    assert meta.config.model.fusion == "cross_attention"
    original = parts["model"].eval()
    inputs = {"image": torch.randn(2, 1, 8, 8), "text": torch.randint(1, 16, (2, 5))}
    present = {"audio": torch.zeros(2, dtype=torch.bool), "image": torch.ones(2, dtype=torch.bool),
               "text": torch.ones(2, dtype=torch.bool)}
    with torch.no_grad():
        torch.testing.assert_close(model(inputs, present).logits, original(inputs, present).logits,
                                   atol=0, rtol=0)
