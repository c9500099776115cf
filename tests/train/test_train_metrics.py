"""Metrics against scikit-learn; consistency score; evaluate()'s per-modality masking."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import Tensor, nn
from torch.testing import assert_close

from mmfurnace.data.batch import Batch
from mmfurnace.models import build_model
from mmfurnace.train.evaluate import evaluate, only_modality
from mmfurnace.train.metrics import accuracy, classification_metrics, consistency_score, f1_scores
from tests.train.tinydata import INFO, tiny_model_config


def test_single_label_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g)
    labels = torch.randint(0, 5, (200,), generator=g)
    labels[:60] = logits[:60].argmax(1)  # some signal, so F1s differ from chance
    pred = logits.argmax(1).numpy()
    m = classification_metrics(logits, labels, multilabel=False)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels.numpy(), pred))
    assert m["micro_f1"] == pytest.approx(f1_score(labels.numpy(), pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(labels.numpy(), pred, average="macro"))


def test_macro_f1_ignores_classes_that_occur_nowhere():
    # class 3 of 4 is neither a label nor a prediction: sklearn's default (labels=None) rule
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    labels = torch.tensor([0, 1, 2, 2])
    micro, macro = f1_scores(logits, labels, multilabel=False)
    pred = logits.argmax(1).numpy()
    assert macro == pytest.approx(f1_score(labels.numpy(), pred, average="macro"))
    assert micro == pytest.approx(0.75)


def test_multilabel_metrics_match_sklearn():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(150, 6, generator=g) < 0.3).float()
    logits = torch.randn(150, 6, generator=g) + (labels * 2 - 1) * 0.8
    pred = (logits > 0).numpy().astype(int)
    y = labels.numpy().astype(int)
    assert y.sum(0).min() > 0
    assert pred.sum(0).min() > 0
    m = classification_metrics(logits, labels, multilabel=True)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))  # exact match
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_accuracy_of_no_rows_is_zero():
    assert accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), multilabel=False) == 0.0


def test_consistency_score_definition():
    eye = torch.eye(4)
    present = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    # identical orthonormal views: matched cos 1, rolled cos 0 -> 1
    assert consistency_score({"a": eye, "b": eye * 3}, present) == pytest.approx(1.0)
    # b = a rolled: matched 0, mismatched 1 -> -1
    assert consistency_score({"a": eye, "b": eye.roll(-1, 0)}, present) == pytest.approx(-1.0)
    # the same direction everywhere carries no pairing information -> 0
    ones = torch.ones(4, 3)
    assert consistency_score({"a": ones, "b": ones}, present) == pytest.approx(0.0)


def test_consistency_score_skips_absent_rows_and_undefined_pairs():
    eye = torch.eye(3)
    junk = torch.full((1, 3), 7.0)
    present = {"a": torch.tensor([True, True, True, False]), "b": torch.ones(4, dtype=torch.bool)}
    a, b = torch.cat([eye, junk]), torch.cat([eye, -junk])
    assert consistency_score({"a": a, "b": b}, present) == pytest.approx(1.0)
    one_row = {"a": torch.tensor([True, False]), "b": torch.tensor([True, True])}
    assert consistency_score({"a": torch.eye(2), "b": torch.eye(2)}, one_row) is None


class VoteOutput(NamedTuple):
    logits: Tensor
    projected: dict[str, Tensor]


class VoteModel(nn.Module):
    """logits = sum over present modalities of that modality's input (a class-score vector)."""

    multilabel = False

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def forward(self, inputs, present, valid):
        self.calls.append(sorted(inputs))
        rows = next(iter(present.values())).shape[0]
        logits = torch.zeros(rows, 3)
        for m, x in inputs.items():
            logits = logits + x * present[m].unsqueeze(1)
        return VoteOutput(logits, {m: x for m, x in inputs.items()})


def vote_batch(labels: list[int], audio_present: list[bool]) -> Batch:
    labels_t = torch.tensor(labels)
    image = nn.functional.one_hot(labels_t, 3).float()  # image always votes right
    audio = torch.tensor([[0.0, 0.0, 2.0]]).repeat(len(labels), 1)  # audio always votes 2, louder
    return Batch(
        inputs={"image": image, "audio": audio},
        valid={},
        present={"audio": torch.tensor(audio_present), "image": torch.ones(len(labels), dtype=torch.bool)},
        labels=labels_t,
    )


def test_evaluate_per_modality_accuracy_uses_only_that_modality():
    batches = [vote_batch([0, 1, 2, 2], [True, True, False, True]), vote_batch([1, 0], [False, False])]
    model = VoteModel()
    model.train()
    result = evaluate(model, batches, "cpu", modalities=["audio", "image"])
    # together: audio (louder, always 2) wins where present -> right on rows with label 2 or no audio
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["samples"] == 6
    # alone: image is always right; audio is right on 1 of its 3 present rows (labels 0, 1, 2)
    assert result["per_modality_accuracy"] == pytest.approx({"image": 1.0, "audio": 1 / 3})
    assert ["audio"] in model.calls
    assert ["image"] in model.calls
    assert model.training, "evaluate restores the train mode"
    assert result["consistency"] is not None


def test_evaluate_without_per_modality():
    result = evaluate(VoteModel(), [vote_batch([0, 1], [True, True])], "cpu",
                      modalities=["audio", "image"], per_modality=False)
    assert result["per_modality_accuracy"] == {}
    assert set(result) >= {"loss", "accuracy", "micro_f1", "macro_f1", "consistency"}


def test_only_modality_masks_and_drops_the_rest():
    batch = vote_batch([0, 1], [True, False])
    single = only_modality(batch, "audio")
    assert sorted(single.inputs) == ["audio"]
    assert torch.equal(single.present["audio"], batch.present["audio"])
    assert not single.present["image"].any()


def test_evaluate_real_model_on_tiny_loader(tiny_loader):
    torch.manual_seed(0)
    model = build_model(tiny_model_config("late"), INFO)
    result = evaluate(model, tiny_loader, "cpu", modalities=INFO.modalities)
    assert result["samples"] == 24
    assert set(result["per_modality_accuracy"]) == {"audio", "image", "text"}
    assert np.isfinite(result["loss"])
    assert -2 <= result["consistency"] <= 2
    # evaluating twice gives the same numbers (eval mode: no dropout)
    again = evaluate(model, tiny_loader, "cpu", modalities=INFO.modalities)
    assert_close(torch.tensor(result["loss"]), torch.tensor(again["loss"]), atol=0, rtol=0)
