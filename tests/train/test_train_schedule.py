"""AdamW + linear warmup + cosine decay, stepped per batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmfurnace.config import load_run_config
from mmfurnace.errors import ConfigError
from mmfurnace.train.schedule import (
    build_optimizer,
    warmup_cosine,
    warmup_cosine_factor,
    warmup_steps_for,
)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.25),  # warmup: (step + 1) / 4
        (1, 0.5),
        (3, 1.0),
        (4, 1.0),  # cosine starts at 1
        (8, 0.5),  # half-way through 8 decay steps
        (6, 0.5 * (1 + math.cos(math.pi * 0.25))),
        (12, 0.0),
        (20, 0.0),  # past the end: flat
    ],
)
def test_warmup_cosine_factor_values(step, expected):
    assert warmup_cosine_factor(step, warmup_steps=4, total_steps=12) == pytest.approx(expected)


def test_min_ratio_and_no_warmup():
    assert warmup_cosine_factor(0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, warmup_steps=0, total_steps=10, min_ratio=0.1) == pytest.approx(0.1)


def test_scheduler_drives_the_optimizer_per_step():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, lr=0.1, weight_decay=0.01)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=6)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    expected = [0.1 * warmup_cosine_factor(s, warmup_steps=2, total_steps=6) for s in range(6)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.05)
    assert seen[1] == pytest.approx(0.1)


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.5)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == 4


@pytest.mark.parametrize(
    ("warmup_epochs", "epochs", "expected"),
    [
        (None, 1, 138),  # a 1-epoch run: a tenth of it, then it decays for 90 % of the steps
        (None, 5, 688),  # half an epoch (687.5 rounded)
        (None, 15, 1375),  # long runs: capped at one epoch
        (0.5, 2, 688),  # set: as set
        (0.0, 1, 0),
    ],
)
def test_warmup_length(warmup_epochs, epochs, expected):
    assert warmup_steps_for(warmup_epochs, steps_per_epoch=1375, epochs=epochs) == expected


def test_a_one_epoch_run_reaches_its_peak_and_decays():
    total = 1375
    warmup = warmup_steps_for(None, steps_per_epoch=total, epochs=1)
    factors = [warmup_cosine_factor(s, warmup_steps=warmup, total_steps=total) for s in range(total)]
    assert max(factors) == pytest.approx(1.0)
    assert factors.index(max(factors)) < total // 5
    assert factors[-1] < 0.01


def test_a_warmup_as_long_as_the_run_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.warmup_epochs: 1 epochs of warmup cover the whole run"):
        load_run_config(None, ["train.epochs=1", "train.warmup_epochs=1"])
    assert load_run_config(None, ["train.epochs=2", "train.warmup_epochs=1"]).train.warmup_epochs == 1


def test_encoder_lr_applies_to_trainable_encoder_parameters_through_the_schedule():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoders = nn.ModuleDict({"text": nn.Linear(3, 4), "image": nn.Linear(3, 4)})
            self.head = nn.Linear(4, 2)

    model = Tiny()
    model.encoders["image"].requires_grad_(False)  # frozen: in no group
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1, encoder_lr=1e-4)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert by_param == {
        id(model.head.weight): (1e-2, 0.1), id(model.head.bias): (1e-2, 0.0),
        id(model.encoders["text"].weight): (1e-4, 0.1), id(model.encoders["text"].bias): (1e-4, 0.0),
    }
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=6)
    opt.step()
    sched.step()  # the end of warmup: each group at its own peak
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 1e-2, 1e-4, 1e-4])
    # without encoder_lr: the two groups of before (decay, no decay), one rate
    plain = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    assert [(len(g["params"]), g["lr"]) for g in plain.param_groups] == [(2, 1e-2), (2, 1e-2)]
