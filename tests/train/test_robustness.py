"""Robustness curves and metrics, and the robustness report (corruptions: tests/data)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmfurnace.data.batch import Sample
from mmfurnace.data.loader import make_loader
from mmfurnace.errors import InputError
from mmfurnace.models import build_model
from mmfurnace.models.classifier import ClassifierOutput
from mmfurnace.train import robustness as rb
from tests.train.tinydata import INFO, TinyDataset, tiny_model_config

# ----------------------------------------------------------------------------- metrics


def test_relative_and_effective_robustness_by_hand():
    curve = [(0.0, 0.8), (0.5, 0.6), (1.0, 0.2)]
    # trapezoids: 0.5 * (0.8 + 0.6) / 2 + 0.5 * (0.6 + 0.2) / 2 = 0.35 + 0.2
    assert rb.curve_auc(curve) == pytest.approx(0.55)
    assert rb.relative_robustness(curve, 0.8) == pytest.approx(0.55 / 0.8)
    assert rb.relative_robustness([(0.0, 0.9), (1.0, 0.9)], 0.9) == pytest.approx(1.0)
    # baseline shifted to 0.8 at level 0: [0.8, 0.4, 0.0] -> gaps [0, 0.2, 0.2] -> area 0.05 + 0.1
    baseline = [(0.0, 0.9), (0.5, 0.5), (1.0, 0.1)]
    assert rb.effective_robustness(curve, baseline) == pytest.approx(0.15)
    with pytest.raises(InputError, match="increasing"):
        rb.relative_robustness([(0.5, 0.8), (0.2, 0.6)], 0.8)
    with pytest.raises(InputError, match="different levels"):
        rb.effective_robustness(curve, [(0.0, 0.9), (1.0, 0.1)])


# ----------------------------------------------------------------------------- evaluation


class ImageOracle(nn.Module):
    """Reads the class from the image (filled with the class id + 1); guesses 0 without it."""

    multilabel = False

    def forward(self, inputs, present, valid=None) -> ClassifierOutput:
        n = len(present["image"])
        image = inputs.get("image", torch.zeros(n, 1, 4, 4))
        value = image.flatten(1).mean(dim=1) * present["image"]
        cls = (value.round().long() - 1).clamp(0, 2)
        logits = nn.functional.one_hot(cls, 3).float()
        return ClassifierOutput(logits, {}, {}, logits, None, None)


def oracle_loader():
    samples = []
    for i in range(18):
        label = i % 3
        samples.append(Sample(
            inputs={"image": torch.full((1, 4, 4), label + 1.0), "audio": torch.randn(5, 6)},
            label=torch.tensor(label),
        ))
    return make_loader(samples, modalities=["audio", "image"], batch_size=6, shuffle=False)


def test_evaluate_robustness_on_an_oracle():
    levels = (0.0, 0.5, 1.0)
    result = rb.evaluate_robustness(ImageOracle(), oracle_loader(), "cpu", modalities=["audio", "image"],
                                    corruptions=[("audio", "white"), ("image", "missing")], levels=levels)
    assert result["clean_accuracy"] == 1.0
    audio = result["curves"]["audio:white"]
    assert audio["accuracy"] == [1.0, 1.0, 1.0]
    # the oracle never reads audio: noise on it changes nothing, and that is not robustness.
    # Alone it is at the model's chance (1/3, class 0 for everything) and removing it costs 0.
    assert audio["ignored"] is True
    assert audio["relative_robustness"] is None
    assert result["chance_accuracy"] == pytest.approx(1 / 3)
    use = result["modality_use"]
    assert use["audio"] == {"alone": pytest.approx(1 / 3), "shuffled": 1.0, "without": 1.0,
                            "ignored": True, "gain_alone": pytest.approx(0.0),
                            "loss_shuffled": pytest.approx(0.0)}
    # the image is read: another row's image is another row's class (rows cycle 0, 1, 2)
    assert use["image"]["shuffled"] == 0.0
    assert use["image"]["alone"] == 1.0
    assert use["image"]["ignored"] is False
    assert "ignored" not in result["curves"]["image:missing"]
    # removing the image from half the rows of each batch of 6 (2 per class on average): the
    # oracle then answers class 0, right only for class-0 rows; at level 1 it is 1/3.
    missing = result["curves"]["image:missing"]["accuracy"]
    assert missing[0] == 1.0
    assert missing[2] == pytest.approx(1 / 3)
    assert 1 / 3 < missing[1] < 1.0
    assert result["removal"] == {"audio": 1.0, "image": pytest.approx(1 / 3)}
    same = rb.robustness_curve(ImageOracle(), oracle_loader(), "cpu", modality="image",
                               corruption="missing", levels=levels)
    assert [acc for _, acc in same] == missing  # the same seed gives the same curve


def test_evaluate_robustness_rejects_a_modality_the_model_lacks():
    with pytest.raises(InputError, match="no text"):
        rb.evaluate_robustness(ImageOracle(), oracle_loader(), "cpu", modalities=["audio", "image"],
                               corruptions=[("text", "drop")])


@pytest.mark.slow
def test_every_corruption_runs_through_a_real_model(tiny_loader):
    torch.manual_seed(0)
    model = build_model(tiny_model_config("cross_attention"), INFO)
    result = rb.evaluate_robustness(model, tiny_loader, "cpu", modalities=INFO.modalities,
                                    levels=(0.0, 0.5, 1.0), seed=1)
    assert set(result["curves"]) == set(rb.CORRUPTIONS.names())
    for entry in result["curves"].values():
        assert entry["accuracy"][0] == result["clean_accuracy"]
        assert all(0.0 <= a <= 1.0 for a in entry["accuracy"])
    assert set(result["removal"]) == {"audio", "image", "text"}
    assert all(0.0 <= a <= 1.0 for a in result["removal"].values())


def fake_result(accuracies: dict[str, list[float]], clean: float) -> dict:
    curves = {}
    for key, accs in accuracies.items():
        curve = list(zip((0.0, 0.5, 1.0), accs, strict=True))
        curves[key] = {"modality": key.split(":")[0], "corruption": key.split(":")[1], "accuracy": accs,
                       "auc": rb.curve_auc(curve), "relative_robustness": rb.relative_robustness(curve, clean)}
    return {"levels": [0.0, 0.5, 1.0], "seed": 0, "clean_accuracy": clean, "curves": curves,
            "removal": {"audio": 0.5, "image": 0.25}}


def test_write_robustness_report(tmp_path):
    results = {
        "late": fake_result({"image:gaussian": [0.9, 0.5, 0.1], "audio:white": [0.9, 0.8, 0.7]}, 0.9),
        "early": fake_result({"image:gaussian": [0.8, 0.6, 0.4], "audio:white": [0.8, 0.8, 0.8]}, 0.8),
    }
    files = rb.write_robustness_report(results, tmp_path, baseline="late")
    saved = json.loads(files["json"].read_text())
    assert saved["methods"] == results
    effective = saved["effective_robustness"]
    assert effective["late"] == {"image:gaussian": pytest.approx(0.0), "audio:white": pytest.approx(0.0)}
    # early - (late shifted to 0.8): gaussian [0, 0.2, 0.4] -> 0.2; white [0, 0.1, 0.2] -> 0.1
    assert effective["early"]["image:gaussian"] == pytest.approx(0.2)
    assert effective["early"]["audio:white"] == pytest.approx(0.1)
    md = files["markdown"].read_text()
    assert "| early | image | gaussian | 0.800 | 0.800 | 0.600 | 0.400 | 0.600 | 0.750 | 0.200 |" in md
    assert "| late | 0.900 | 0.500 | 0.250 |" in md  # clean, without audio, without image
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="baseline"):
        rb.write_robustness_report(results, tmp_path, baseline="nope")


@pytest.mark.parametrize(
    ("alone", "shuffled", "ignored"),
    [
        (0.12, 0.90, True),  # alone at chance, another row's content costs nothing: ignored
        (0.40, 0.90, False),  # useful alone (the redundant case: its content is not needed here)
        (0.12, 0.60, False),  # useless alone but its content matters: used in combination
        (0.15, 0.86, True),  # within a tenth of the 0.8 margin on both sides
    ],
)
def test_modality_use_tells_ignored_from_robust(alone, shuffled, ignored):
    from mmfurnace.train.modality_use import modality_use

    use = modality_use(0.90, 0.10, {"audio": alone, "image": 0.85}, {"audio": shuffled, "image": 0.2})
    assert use["audio"]["ignored"] is ignored
    assert use["image"]["ignored"] is False
    assert modality_use(0.1, 0.1, {"a": 0.1}, {"a": 0.1})["a"]["ignored"]  # no margin: nothing used


class BiasedByAbsentAudio(ImageOracle):
    """Reads only the image, but an *absent* audio (never seen in training) shifts its
    answer: removal costs accuracy although the audio's content is never read."""

    def forward(self, inputs, present, valid=None) -> ClassifierOutput:
        out = super().forward(inputs, present, valid)
        if not bool(present["audio"].all()):
            shifted = out.logits.roll(1, dims=1) * (~present["audio"]).float()[:, None]
            logits = torch.where(present["audio"][:, None], out.logits, shifted)
            return ClassifierOutput(logits, {}, {}, logits, None, None)
        return out


def test_removal_cost_from_an_unseen_absent_input_is_not_use():
    result = rb.evaluate_robustness(BiasedByAbsentAudio(), oracle_loader(), "cpu",
                                    modalities=["audio", "image"], corruptions=[("audio", "white")],
                                    levels=(0.0, 1.0))
    use = result["modality_use"]["audio"]
    assert result["removal"]["audio"] < 0.5  # removing it hurts...
    assert use["shuffled"] == 1.0  # ...but its content is never read
    assert use["ignored"] is True
    assert result["curves"]["audio:white"]["relative_robustness"] is None


def test_report_marks_an_ignored_modality(tmp_path):
    result = rb.evaluate_robustness(ImageOracle(), oracle_loader(), "cpu", modalities=["audio", "image"],
                                    corruptions=[("audio", "white")], levels=(0.0, 1.0))
    md = rb.write_robustness_report({"oracle": result}, tmp_path)["markdown"].read_text()
    assert "| oracle | audio | white | 1.000 | 1.000 | 1.000 | 1.000 | ignored |" in md
    assert "| oracle | 0.333 | 0.333 (ignored) | 1.000 | 1.000 | 0.000 |" in md
    assert "- oracle, audio: ignored by the model: alone 0.333 vs chance 0.333, another row's audio costs +0.000" in md


def test_removing_the_only_modality_still_evaluates():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("late"), INFO, modalities=["image"])
    loader = make_loader(TinyDataset(12, seed=5), modalities=["image"], batch_size=6, shuffle=False)
    result = rb.evaluate_robustness(model, loader, "cpu", modalities=["image"],
                                    corruptions=[("image", "missing")], levels=(0.0, 1.0))
    assert result["removal"]["image"] == result["curves"]["image:missing"]["accuracy"][1]
