"""The compression fine-tune loop keeps the best epoch when given a score to select on."""

from __future__ import annotations

import copy

import torch

from mmfurnace.compress.config import FinetuneConfig
from mmfurnace.compress.finetune import finetune, training_loss
from mmfurnace.train.checkpoint import load_model


def test_finetune_ends_with_the_weights_of_its_best_scoring_epoch(trained, train_loader):
    model, _ = load_model(trained)
    scores = iter([0.5, 0.9, 0.7])  # epoch 2 is best
    snapshots = []

    def select_on(m):
        snapshots.append(copy.deepcopy(m.state_dict()))
        return next(scores)

    history = finetune(model, train_loader, FinetuneConfig(epochs=3, lr=1e-2),
                       loss_fn=training_loss(multilabel=False), select_on=select_on)
    assert [h["score"] for h in history] == [0.5, 0.9, 0.7]
    assert not model.training
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert any(not torch.equal(final[k], snapshots[2][k]) for k in final)  # not simply the last epoch


def test_finetune_steps_are_the_training_recipes_step(trained, train_loader, monkeypatch):
    import mmfurnace.compress.finetune as finetune_module

    model, _ = load_model(trained)
    calls = []
    real = finetune_module.train_step

    def counted(*args, **kwargs):
        calls.append(kwargs["tc"].precision)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "train_step", counted)
    history = finetune(model, train_loader, FinetuneConfig(epochs=1, lr=1e-2, max_steps=3),
                       loss_fn=training_loss(multilabel=False))
    assert calls == ["fp32"] * 3
    assert history[-1]["steps"] == 3

