"""The one evaluation loop: what it yields, what it leaves switched on, and that accuracy means
the same number in training, eval, robustness, the compression report and export parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfurnace.export.inputs import make_example_batch
from mmfurnace.models import build_model
from mmfurnace.models.predict import accuracy, predicted_accuracy, predictions

from .conftest import tiny_config


@pytest.fixture
def model(tiny_info):
    return build_model(tiny_config("late"), tiny_info)


@pytest.fixture
def batches(tiny_info):
    return [make_example_batch(tiny_info, n, seed=n) for n in (3, 5)]


def test_one_prediction_per_batch_and_nothing_left_switched(model, batches):
    model.train()
    seen = []
    for p in predictions(model, batches, "cpu", precision="bf16"):
        # the consumer runs with gradients and without autocast, whatever the loop did inside
        assert torch.is_grad_enabled()
        assert not torch.is_autocast_enabled("cpu")
        assert not model.training  # evaluated in eval mode
        assert p.logits.dtype == torch.float32
        assert p.logits.device.type == "cpu"
        assert p.output.projected["image"].dtype == torch.bfloat16  # it ran under bf16 autocast
        seen.append(p.logits.shape)
    assert seen == [(3, 4), (5, 4)]
    assert model.training  # mode restored


def test_a_half_precision_model_gets_inputs_in_its_dtype(model, batches):
    model.eval()
    reference = torch.cat([p.logits for p in predictions(model, batches)])
    half = model.to(torch.bfloat16)
    got = torch.cat([p.logits for p in predictions(half, batches)])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, rtol=0.1, atol=0.1)  # bf16 rounding only


def test_a_predictor_that_is_not_a_module(model, batches):
    model.eval()

    def numpy_predictor(batch):  # as an ONNX Runtime session answers
        with torch.no_grad():
            return model(batch.inputs, batch.present, batch.valid).logits.numpy()

    got = [p.logits for p in predictions(numpy_predictor, batches, None)]
    want = [p.logits for p in predictions(model, batches)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert predicted_accuracy(numpy_predictor, batches, None, multilabel=False) == predicted_accuracy(model, batches)


def test_transform_sees_the_batch_on_the_device(model, batches):
    seen = []

    def transform(batch):
        seen.append(len(batch))
        return batch

    list(predictions(model, batches, "cpu", transform=transform))
    assert seen == [3, 5]


def test_accuracy_is_a_share_and_multilabel_is_exact_match():
    logits = torch.tensor([[2.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    assert accuracy(logits, torch.tensor([0, 1]), multilabel=False) == 0.5
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # row 2 gets one label wrong
    assert accuracy(logits, labels, multilabel=True) == 0.5
    assert accuracy(logits[:0], labels[:0], multilabel=True) == 0.0


def test_multilabel_comes_from_the_model(tiny_info):
    import dataclasses

    info = dataclasses.replace(tiny_info, multilabel=True)
    model = build_model(tiny_config("late"), info)
    hot = [make_example_batch(info, n, seed=n) for n in (4, 6)]
    assert hot[0].labels.shape == (4, 4)  # multi-hot
    logits = torch.cat([p.logits for p in predictions(model, hot)])
    labels = torch.cat([b.labels for b in hot])
    assert predicted_accuracy(model, hot) == accuracy(logits, labels, multilabel=True)


def test_every_evaluation_reports_the_same_accuracy(model, batches, tiny_info):
    """train/evaluate, robustness, the compression report and export parity agree."""
    from mmfurnace.compress.measure import evaluate_predict
    from mmfurnace.compress.runners import TorchPredictor
    from mmfurnace.export.parity import _accuracy as parity_accuracy
    from mmfurnace.train.evaluate import evaluate
    from mmfurnace.train.robustness import _accuracy as robustness_accuracy

    model.eval()
    trained = evaluate(model, batches, "cpu", modalities=tiny_info.modalities, per_modality=False)["accuracy"]
    assert robustness_accuracy(model, batches, "cpu") == trained
    assert evaluate_predict(TorchPredictor(model), batches, multilabel=False) == trained
    logits = torch.cat([p.logits for p in predictions(model, batches)]).numpy()
    labels = torch.cat([b.labels for b in batches]).numpy()
    assert parity_accuracy(logits, labels, False) == trained
    assert np.isfinite(trained)
