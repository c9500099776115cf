"""Corruptions, robustness curves and metrics, and the robustness report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from mmfurnace.data.batch import PAD_ID, Batch, Sample, collate_samples
from mmfurnace.data.loader import make_loader
from mmfurnace.data.text import CLS_ID, SEP_ID
from mmfurnace.errors import InputError
from mmfurnace.models import build_model
from mmfurnace.models.classifier import ClassifierOutput
from mmfurnace.train import robustness as rb
from tests.train.tinydata import INFO, TinyDataset, tiny_model_config

LEVEL = 0.5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> Batch:
    """12 tiny samples: ragged audio/text, some modalities missing, no zeros in real data."""
    dataset = TinyDataset(12, seed=4)
    samples = []
    for s in dataset.samples:
        inputs = dict(s.inputs)
        if "image" in inputs:
            inputs["image"] = inputs["image"].abs() + 0.1
        if "audio" in inputs:
            inputs["audio"] = inputs["audio"].abs() + 0.1
        if "text" in inputs:  # [CLS] words... [SEP]
            words = torch.randint(6, 16, (len(inputs["text"]),))
            inputs["text"] = torch.cat([torch.tensor([CLS_ID]), words, torch.tensor([SEP_ID])])
        samples.append(Sample(inputs=inputs, label=s.label))
    return collate_samples(samples, INFO.modalities)


def assert_same(a: Batch, b: Batch) -> None:
    for field in ("inputs", "padding", "present"):
        x, y = getattr(a, field), getattr(b, field)
        assert sorted(x) == sorted(y)
        for key in x:
            assert_close(x[key], y[key], rtol=0, atol=0)
    assert_close(a.labels, b.labels, rtol=0, atol=0)


def words(batch: Batch) -> Tensor:
    x = batch.inputs["text"]
    return batch.padding["text"] & (x != PAD_ID) & (x != CLS_ID) & (x != SEP_ID)


@pytest.mark.parametrize("name", rb.CORRUPTIONS.names())
def test_level_zero_is_identity_and_input_untouched(batch, name):
    before = Batch(*(dict(d) if isinstance(d, dict) else d for d in
                     (batch.inputs, batch.padding, batch.present, batch.labels)))
    snapshot = {k: v.clone() for k, v in batch.inputs.items()}
    assert_same(rb.CORRUPTIONS[name](batch, 0.0, gen()), batch)
    out = rb.CORRUPTIONS[name](batch, LEVEL, gen())
    for key, value in snapshot.items():  # the input batch is never modified in place
        assert_close(batch.inputs[key], value, rtol=0, atol=0)
    assert_same(before, batch)
    assert len(out) == len(batch)


@pytest.mark.parametrize("name", rb.CORRUPTIONS.names())
def test_same_seed_same_corruption_and_no_global_rng(batch, name):
    state = torch.get_rng_state()
    a = rb.CORRUPTIONS[name](batch, LEVEL, gen(3))
    b = rb.CORRUPTIONS[name](batch, LEVEL, gen(3))
    assert_same(a, b)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["image:gaussian", "image:occlusion", "audio:white", "audio:dropout",
                                  "text:unk", "text:drop", "image:missing"])
def test_different_seeds_differ(batch, name):
    a, b = rb.CORRUPTIONS[name](batch, LEVEL, gen(1)), rb.CORRUPTIONS[name](batch, LEVEL, gen(2))
    modality = name.split(":")[0]
    assert not (torch.equal(a.inputs[modality], b.inputs[modality])
                and torch.equal(a.present[modality], b.present[modality]))


def test_bad_level_is_an_input_error(batch):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        rb.image_gaussian_noise(batch, 1.5, gen())


def test_gaussian_noise_scale_and_absent_rows(batch):
    x, rows = batch.inputs["image"], batch.present["image"]
    out = rb.image_gaussian_noise(batch, LEVEL, gen()).inputs["image"]
    diff = out - x
    assert_close(diff[~rows], torch.zeros_like(diff[~rows]), rtol=0, atol=0)
    expected = LEVEL * x[rows].std(correction=0)
    assert float(diff[rows].std()) == pytest.approx(float(expected), rel=0.15)


def test_blur_smooths_and_keeps_constants(batch):
    x = batch.inputs["image"]
    out = rb.image_blur(batch, 1.0, gen()).inputs["image"]
    rows = batch.present["image"]
    assert float(out[rows].var()) < 0.5 * float(x[rows].var())
    flat = Batch({"image": torch.full((2, 1, 8, 8), 0.7)}, {}, {"image": torch.ones(2, dtype=torch.bool)},
                 torch.zeros(2, dtype=torch.long))
    assert_close(rb.image_blur(flat, 0.8, gen()).inputs["image"], flat.inputs["image"])


@pytest.mark.parametrize("level", [0.25, 0.5, 1.0])
def test_occlusion_zeroes_one_rectangle_of_level_area(level):
    images = torch.rand(5, 3, 20, 20) + 0.5
    present = torch.tensor([True, True, False, True, True])
    images[~present] = 0
    batch = Batch({"image": images}, {}, {"image": present}, torch.zeros(5, dtype=torch.long))
    out = rb.image_occlusion(batch, level, gen()).inputs["image"]
    for i in range(5):
        zero = (out[i] == 0).all(dim=0)  # (H, W): every channel occluded together
        if not present[i]:
            assert bool(zero.all())
            continue
        assert float(zero.float().mean()) == pytest.approx(level, abs=0.03)
        ys, xs = zero.nonzero(as_tuple=True)
        box = (int(ys.max() - ys.min()) + 1) * (int(xs.max() - xs.min()) + 1)
        assert box == int(zero.sum())  # one solid rectangle
        assert_close(out[i][:, ~zero], images[i][:, ~zero], rtol=0, atol=0)


def test_audio_white_noise_only_on_real_frames(batch):
    x, real = batch.inputs["audio"], batch.padding["audio"] & batch.present["audio"][:, None]
    out = rb.audio_white_noise(batch, LEVEL, gen()).inputs["audio"]
    assert_close(out[~real], x[~real], rtol=0, atol=0)
    assert bool((out[real] != x[real]).all())
    assert_close(rb.audio_white_noise(batch, LEVEL, gen()).padding["audio"], batch.padding["audio"])


def test_audio_frame_dropout_zeroes_level_share_of_real_frames(batch):
    x = batch.inputs["audio"]
    out = rb.audio_frame_dropout(batch, LEVEL, gen())
    assert_close(out.padding["audio"], batch.padding["audio"], rtol=0, atol=0)
    zeroed = (out.inputs["audio"] == 0).all(dim=-1) & ~(x == 0).all(dim=-1)
    real = batch.padding["audio"] & batch.present["audio"][:, None]
    assert not bool((zeroed & ~real).any())
    for i in range(len(batch)):
        n = int(real[i].sum())
        assert int(zeroed[i].sum()) == math.floor(LEVEL * n + 0.5)


def test_text_unk_replaces_words_and_keeps_pad_and_specials(batch):
    x = batch.inputs["text"]
    out = rb.text_unk(batch, LEVEL, gen())
    y = out.inputs["text"]
    w = words(batch)
    assert_close(out.padding["text"], batch.padding["text"], rtol=0, atol=0)
    assert_close(y[~w], x[~w], rtol=0, atol=0)  # PAD, [CLS], [SEP] in place
    for i in range(len(batch)):
        assert int((y[i] == rb.UNK_ID).sum()) == math.floor(LEVEL * int(w[i].sum()) + 0.5)


@pytest.mark.parametrize("level", [0.5, 1.0])
def test_text_drop_removes_words_and_compacts(batch, level):
    x = batch.inputs["text"]
    out = rb.text_drop(batch, level, gen())
    y, mask = out.inputs["text"], out.padding["text"]
    w = words(batch)
    for i in range(len(batch)):
        if not batch.present["text"][i]:
            assert bool((y[i] == PAD_ID).all())
            assert not bool(mask[i].any())
            continue
        n = int(w[i].sum())
        k = min(math.floor(level * n + 0.5), n - 1)
        old = x[i][batch.padding["text"][i]].tolist()
        new = y[i][mask[i]].tolist()
        assert len(new) == len(old) - k
        assert new[0] == CLS_ID
        assert new[-1] == SEP_ID
        it = iter(old)
        assert all(tok in it for tok in new)  # an order-preserving subsequence
        assert mask[i].tolist() == [True] * len(new) + [False] * (len(mask[i]) - len(new))
        assert bool((y[i][~mask[i]] == PAD_ID).all())


def test_missing_marks_share_absent_and_resets_rows(batch):
    before = batch.present["audio"]
    out = rb.drop_modality(batch, "audio", LEVEL, gen())
    gone = before & ~out.present["audio"]
    assert not bool((out.present["audio"] & ~before).any())
    assert int(gone.sum()) == math.floor(LEVEL * int(before.sum()) + 0.5)
    assert bool((out.inputs["audio"][gone] == 0).all())
    assert not bool(out.padding["audio"][gone].any())
    removed = rb.remove_modality(batch, "audio")
    assert not bool(removed.present["audio"].any())
    assert bool((removed.inputs["audio"] == 0).all())
    assert not bool(removed.padding["audio"].any())
    assert_close(removed.inputs["image"], batch.inputs["image"], rtol=0, atol=0)


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


def test_parse_noise_spec():
    assert rb.parse_noise_spec("image:gaussian, audio:white") == [("image", "gaussian"), ("audio", "white")]
    assert rb.parse_noise_spec("text") == [("text", c) for c in rb.corruptions_for("text")]
    assert rb.parse_noise_spec("image:blur,image:blur") == [("image", "blur")]
    with pytest.raises(InputError, match="unknown modality 'video'; known: audio, image, text"):
        rb.parse_noise_spec("video:gaussian")
    with pytest.raises(InputError, match="unknown image corruption 'white'; known: blur, gaussian"):
        rb.parse_noise_spec("image:white")
    with pytest.raises(InputError, match="e.g. image:gaussian"):
        rb.parse_noise_spec("image:blur,,")
    with pytest.raises(InputError):
        rb.parse_noise_spec("")


# ----------------------------------------------------------------------------- evaluation


class ImageOracle(nn.Module):
    """Reads the class from the image (filled with the class id + 1); guesses 0 without it."""

    multilabel = False

    def forward(self, inputs, present, padding=None) -> ClassifierOutput:
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

    def forward(self, inputs, present, padding=None) -> ClassifierOutput:
        out = super().forward(inputs, present, padding)
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
