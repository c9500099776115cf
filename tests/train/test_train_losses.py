"""Each loss term on hand-checkable tensors; modality dropout never empties a row."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from mmfurnace.train.losses import (
    consistency_infonce,
    consistency_mse,
    drop_modalities,
    modality_l2,
    recipe_loss,
    task_loss,
    total_loss,
)

T, F = True, False


def mask(*values: bool) -> torch.Tensor:
    return torch.tensor(values)


def test_task_loss_cross_entropy_and_bce():
    logits = torch.zeros(2, 2)
    assert_close(task_loss(logits, torch.tensor([0, 1]), multilabel=False), torch.tensor(math.log(2)))
    multi_hot = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert_close(task_loss(logits, multi_hot, multilabel=True), torch.tensor(math.log(2)))


def test_label_smoothing_spreads_the_target_over_every_class():
    """Single-label: (1 - e) * CE(class) + e * mean over classes of -log p; multi-label: each
    0/1 target moved e/2 towards 1/2. At e = 0 both are the plain losses."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 2])
    nll = -torch.log_softmax(logits, dim=1)
    e = 0.2
    expected = ((1 - e) * nll[torch.arange(2), labels] + e * nll.mean(1)).mean()
    assert_close(task_loss(logits, labels, multilabel=False, label_smoothing=e), expected)
    assert_close(task_loss(logits, labels, multilabel=False, label_smoothing=0.0),
                 task_loss(logits, labels, multilabel=False))
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    moved = torch.tensor([[0.9, 0.1, 0.9], [0.1, 0.1, 0.9]])
    p = torch.sigmoid(logits)
    bce = -(moved * p.log() + (1 - moved) * (1 - p).log()).mean()
    assert_close(task_loss(logits, multi_hot, multilabel=True, label_smoothing=e), bce)
    # smoothing never rewards certainty: a confident right answer now costs more than 0
    sure = torch.tensor([[30.0, 0.0, 0.0]])
    assert task_loss(sure, torch.tensor([0]), multilabel=False) < 1e-6
    assert task_loss(sure, torch.tensor([0]), multilabel=False, label_smoothing=e) > 1.0


def test_recipe_loss_takes_every_weight_from_the_train_config():
    from types import SimpleNamespace

    from mmfurnace.train.config import TrainConfig

    tc = TrainConfig(alpha=0.5, beta=0.25, label_smoothing=0.3)
    logits = torch.tensor([[1.0, 0.0, -2.0], [0.0, 3.0, 0.5]])
    labels = torch.tensor([0, 2])
    projected = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    embeddings = {"a": torch.ones(2, 2), "b": torch.zeros(2, 2)}
    present = {"a": mask(T, T), "b": mask(T, T)}
    out = SimpleNamespace(logits=logits, projected=projected, embeddings=embeddings)
    parts = recipe_loss(tc, multilabel=False)(out, SimpleNamespace(labels=labels), present)
    expected = total_loss(logits, labels, projected=projected, embeddings=embeddings,
                          present=present, multilabel=False, alpha=0.5, beta=0.25,
                          label_smoothing=0.3)
    assert_close(parts.total, expected.total)
    assert_close(parts.task, task_loss(logits, labels, multilabel=False, label_smoothing=0.3))


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_label_smoothing_outside_0_1_is_a_config_error(value: float):
    from mmfurnace.config import load_run_config
    from mmfurnace.errors import ConfigError

    with pytest.raises(ConfigError, match="train.label_smoothing"):
        load_run_config(None, [f"train.label_smoothing={value}"])


def test_consistency_mse_only_counts_rows_where_both_are_present():
    # row 0: orthogonal unit vectors -> squared distance 2; row 1: same direction -> 0.
    # row 2 is absent in "a" and holds NaN: it must contribute nothing.
    a = torch.tensor([[1.0, 0.0], [0.0, 5.0], [math.nan, math.nan]], requires_grad=True)
    b = torch.tensor([[0.0, 3.0], [0.0, 2.0], [4.0, 4.0]])
    present = {"a": mask(T, T, F), "b": mask(T, T, T)}
    loss = consistency_mse({"a": a, "b": b}, present)
    assert_close(loss, torch.tensor(1.0))
    loss.backward()
    assert torch.isfinite(a.grad).all()
    assert_close(a.grad[2], torch.zeros(2))


def test_consistency_mse_averages_over_pairs():
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0]])
    present = {m: mask(T) for m in "abc"}
    # pairs (a,b)=2, (a,c)=0, (b,c)=2 -> mean 4/3
    assert_close(consistency_mse({"a": x, "b": y, "c": x}, present), torch.tensor(4 / 3))


def test_consistency_is_zero_without_pairs_and_still_backpropagates():
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    present = {"a": mask(T, F, T), "b": mask(F, T, F)}  # never both present
    for loss in (
        consistency_mse({"a": a, "b": b}, present),
        consistency_infonce({"a": a, "b": b}, present, temperature=0.1),
        consistency_mse({"a": a}, {"a": mask(T, T, T)}),  # one modality: no pair at all
    ):
        assert loss.item() == 0.0
        loss.backward()
        assert a.grad is not None
        assert torch.count_nonzero(a.grad) == 0


def test_consistency_infonce_matches_hand_computation():
    # two rows, each matched exactly with its pair and orthogonal to the other:
    # logits = I / T, each row's CE = log(1 + e^{-1/T}) (both directions alike)
    eye = torch.eye(2)
    present = {"a": mask(T, T, F), "b": mask(T, T, T)}
    junk = torch.tensor([[9.0, -9.0]])
    a, b = torch.cat([eye, junk]), torch.cat([eye, junk * -1])
    loss = consistency_infonce({"a": a, "b": b}, present, temperature=1.0)
    assert_close(loss, torch.tensor(math.log(1 + math.exp(-1.0))))
    loss_sharp = consistency_infonce({"a": a, "b": b}, present, temperature=0.5)
    assert_close(loss_sharp, torch.tensor(math.log(1 + math.exp(-2.0))))


def test_modality_l2_mean_squared_norm_over_present_rows():
    emb = {
        "a": torch.tensor([[3.0, 4.0], [100.0, 0.0]]),  # row 1 absent
        "b": torch.tensor([[0.0, 2.0], [0.0, 0.0]]),
        "c": torch.tensor([[7.0, 7.0], [7.0, 7.0]]),  # absent everywhere: skipped
    }
    present = {"a": mask(T, F), "b": mask(T, T), "c": mask(F, F)}
    # a: 25; b: (4 + 0) / 2 = 2 -> mean over a, b = 13.5
    assert_close(modality_l2(emb, present), torch.tensor(13.5))


def test_total_loss_weights_the_terms():
    logits = torch.zeros(2, 3)
    labels = torch.tensor([0, 2])
    projected = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    embeddings = {"a": torch.ones(2, 2), "b": torch.zeros(2, 2)}
    present = {"a": mask(T, T), "b": mask(T, T)}
    parts = total_loss(logits, labels, projected=projected, embeddings=embeddings, present=present,
                       multilabel=False, alpha=0.5, beta=0.25)
    assert_close(parts.task, torch.tensor(math.log(3)))
    assert_close(parts.consistency, torch.tensor(1.0))  # (2 + 0) / 2
    assert_close(parts.regularizer, torch.tensor(1.0))  # (2 + 0) / 2
    assert_close(parts.total, parts.task + 0.5 * 1.0 + 0.25 * 1.0)


def test_zero_weight_terms_are_not_computed(monkeypatch: pytest.MonkeyPatch):
    """alpha = beta = 0: neither term is evaluated (a NaN projection cannot reach the loss),
    the total is the task loss with its gradient, and the skipped parts are exact zeros."""
    import mmfurnace.train.losses as losses

    def boom(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("a zero-weight term was computed")

    for name in ("consistency_mse", "consistency_infonce", "modality_l2"):
        monkeypatch.setattr(losses, name, boom)
    logits = torch.randn(2, 3, requires_grad=True)
    projected = {"a": torch.full((2, 2), float("nan")), "b": torch.ones(2, 2)}
    present = {"a": mask(T, T), "b": mask(T, T)}
    for consistency in ("mse", "infonce"):
        parts = total_loss(logits, torch.tensor([0, 2]), projected=projected, embeddings=projected,
                           present=present, multilabel=False, alpha=0.0, beta=0.0,
                           consistency=consistency)
        assert_close(parts.total, task_loss(logits, torch.tensor([0, 2]), multilabel=False))
        assert parts.consistency.item() == 0.0
        assert parts.regularizer.item() == 0.0
    parts.total.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_one_zero_weight_keeps_the_other_term():
    logits = torch.zeros(2, 3)
    projected = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    embeddings = {"a": torch.ones(2, 2), "b": torch.zeros(2, 2)}
    present = {"a": mask(T, T), "b": mask(T, T)}
    parts = total_loss(logits, torch.tensor([0, 2]), projected=projected, embeddings=embeddings,
                       present=present, multilabel=False, alpha=0.0, beta=0.25)
    assert parts.consistency.item() == 0.0
    assert_close(parts.regularizer, torch.tensor(1.0))
    assert_close(parts.total, parts.task + 0.25)


def test_losses_are_float32_under_bf16_inputs():
    logits = torch.zeros(2, 3, dtype=torch.bfloat16)
    projected = {"a": torch.randn(2, 4).bfloat16(), "b": torch.randn(2, 4).bfloat16()}
    present = {"a": mask(T, T), "b": mask(T, T)}
    parts = total_loss(logits, torch.tensor([0, 1]), projected=projected, embeddings=projected,
                       present=present, multilabel=False, alpha=1.0, beta=1.0, consistency="infonce")
    assert all(p.dtype == torch.float32 and torch.isfinite(p) for p in parts)


def test_modality_dropout_never_empties_a_row():
    rows = 3000
    g = torch.Generator().manual_seed(0)
    present = {
        "audio": torch.rand(rows, generator=g) < 0.8,
        "image": torch.rand(rows, generator=g) < 0.8,
        "text": torch.rand(rows, generator=g) < 0.8,
    }
    present["audio"][:10] = False  # rows 0..9: nothing at all, must stay empty
    present["image"][:10] = False
    present["text"][:10] = False
    had = torch.stack(list(present.values())).any(0)
    for p in (0.3, 0.9, 0.999):
        dropped = drop_modalities(present, {"audio": p, "image": p, "text": p}, torch.Generator().manual_seed(1))
        kept = torch.stack([dropped[m] for m in sorted(present)])
        original = torch.stack([present[m] for m in sorted(present)])
        assert not (kept & ~original).any(), "dropout must never add a modality"
        assert torch.equal(kept.any(0), had), "a row that had a modality keeps at least one"
    # a row with a single modality is never touched
    single = present["audio"] & ~present["image"] & ~present["text"]
    assert single.any()
    dropped = drop_modalities(present, {"audio": 0.999}, torch.Generator().manual_seed(2))
    assert dropped["audio"][single].all()


def test_modality_dropout_rate_and_determinism():
    rows = 4000
    present = {m: torch.ones(rows, dtype=torch.bool) for m in ("audio", "image", "text")}
    probs = {"audio": 0.3}
    first = drop_modalities(present, probs, torch.Generator().manual_seed(7))
    again = drop_modalities(present, probs, torch.Generator().manual_seed(7))
    assert all(torch.equal(first[m], again[m]) for m in present)
    rate = 1 - first["audio"].float().mean().item()
    assert 0.27 < rate < 0.33
    assert first["image"].all()
    assert first["text"].all()


def test_modality_dropout_without_probabilities_is_identity():
    present = {"audio": mask(T, F), "image": mask(T, T)}
    assert drop_modalities(present, {}, torch.Generator()) is present


@pytest.mark.parametrize("p", [0.5, 0.99])
def test_modality_dropout_with_all_modalities_keeps_exactly_one_when_all_drawn(p):
    present = {m: torch.ones(500, dtype=torch.bool) for m in ("audio", "image")}
    out = drop_modalities(present, {"audio": p, "image": p}, torch.Generator().manual_seed(3))
    count = out["audio"].int() + out["image"].int()
    assert (count >= 1).all()
