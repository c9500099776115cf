"""Corruptions: Batch -> Batch transforms, level 0 is the identity, seeded, and each damages
what it says and nothing else; noise specs parse to registered corruptions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from mmfurnace.data import corruptions as cr
from mmfurnace.data.batch import PAD_ID, Batch, Sample, collate_samples
from mmfurnace.data.text import CLS_ID, SEP_ID
from mmfurnace.errors import InputError
from tests.train.tinydata import INFO, TinyDataset

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
    for field in ("inputs", "valid", "present"):
        x, y = getattr(a, field), getattr(b, field)
        assert sorted(x) == sorted(y)
        for key in x:
            assert_close(x[key], y[key], rtol=0, atol=0)
    assert_close(a.labels, b.labels, rtol=0, atol=0)


def words(batch: Batch) -> Tensor:
    x = batch.inputs["text"]
    return batch.valid["text"] & (x != PAD_ID) & (x != CLS_ID) & (x != SEP_ID)


@pytest.mark.parametrize("name", cr.CORRUPTIONS.names())
def test_level_zero_is_identity_and_input_untouched(batch, name):
    before = Batch(*(dict(d) if isinstance(d, dict) else d for d in
                     (batch.inputs, batch.valid, batch.present, batch.labels)))
    snapshot = {k: v.clone() for k, v in batch.inputs.items()}
    assert_same(cr.CORRUPTIONS[name](batch, 0.0, gen()), batch)
    out = cr.CORRUPTIONS[name](batch, LEVEL, gen())
    for key, value in snapshot.items():  # the input batch is never modified in place
        assert_close(batch.inputs[key], value, rtol=0, atol=0)
    assert_same(before, batch)
    assert len(out) == len(batch)


@pytest.mark.parametrize("name", cr.CORRUPTIONS.names())
def test_same_seed_same_corruption_and_no_global_rng(batch, name):
    state = torch.get_rng_state()
    a = cr.CORRUPTIONS[name](batch, LEVEL, gen(3))
    b = cr.CORRUPTIONS[name](batch, LEVEL, gen(3))
    assert_same(a, b)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["image:gaussian", "image:occlusion", "audio:white", "audio:dropout",
                                  "text:unk", "text:drop", "image:missing"])
def test_different_seeds_differ(batch, name):
    a, b = cr.CORRUPTIONS[name](batch, LEVEL, gen(1)), cr.CORRUPTIONS[name](batch, LEVEL, gen(2))
    modality = name.split(":")[0]
    assert not (torch.equal(a.inputs[modality], b.inputs[modality])
                and torch.equal(a.present[modality], b.present[modality]))


def test_bad_level_is_an_input_error(batch):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        cr.image_gaussian_noise(batch, 1.5, gen())


def test_gaussian_noise_scale_and_absent_rows(batch):
    x, rows = batch.inputs["image"], batch.present["image"]
    out = cr.image_gaussian_noise(batch, LEVEL, gen()).inputs["image"]
    diff = out - x
    assert_close(diff[~rows], torch.zeros_like(diff[~rows]), rtol=0, atol=0)
    expected = LEVEL * x[rows].std(correction=0)
    assert float(diff[rows].std()) == pytest.approx(float(expected), rel=0.15)


def test_blur_smooths_and_keeps_constants(batch):
    x = batch.inputs["image"]
    out = cr.image_blur(batch, 1.0, gen()).inputs["image"]
    rows = batch.present["image"]
    assert float(out[rows].var()) < 0.5 * float(x[rows].var())
    flat = Batch({"image": torch.full((2, 1, 8, 8), 0.7)}, {}, {"image": torch.ones(2, dtype=torch.bool)},
                 torch.zeros(2, dtype=torch.long))
    assert_close(cr.image_blur(flat, 0.8, gen()).inputs["image"], flat.inputs["image"])


@pytest.mark.parametrize("level", [0.25, 0.5, 1.0])
def test_occlusion_zeroes_one_rectangle_of_level_area(level):
    images = torch.rand(5, 3, 20, 20) + 0.5
    present = torch.tensor([True, True, False, True, True])
    images[~present] = 0
    batch = Batch({"image": images}, {}, {"image": present}, torch.zeros(5, dtype=torch.long))
    out = cr.image_occlusion(batch, level, gen()).inputs["image"]
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
    x, real = batch.inputs["audio"], batch.valid["audio"] & batch.present["audio"][:, None]
    out = cr.audio_white_noise(batch, LEVEL, gen()).inputs["audio"]
    assert_close(out[~real], x[~real], rtol=0, atol=0)
    assert bool((out[real] != x[real]).all())
    assert_close(cr.audio_white_noise(batch, LEVEL, gen()).valid["audio"], batch.valid["audio"])


def test_audio_frame_dropout_zeroes_level_share_of_real_frames(batch):
    x = batch.inputs["audio"]
    out = cr.audio_frame_dropout(batch, LEVEL, gen())
    assert_close(out.valid["audio"], batch.valid["audio"], rtol=0, atol=0)
    zeroed = (out.inputs["audio"] == 0).all(dim=-1) & ~(x == 0).all(dim=-1)
    real = batch.valid["audio"] & batch.present["audio"][:, None]
    assert not bool((zeroed & ~real).any())
    for i in range(len(batch)):
        n = int(real[i].sum())
        assert int(zeroed[i].sum()) == math.floor(LEVEL * n + 0.5)


def test_text_unk_replaces_words_and_keeps_pad_and_specials(batch):
    x = batch.inputs["text"]
    out = cr.text_unk(batch, LEVEL, gen())
    y = out.inputs["text"]
    w = words(batch)
    assert_close(out.valid["text"], batch.valid["text"], rtol=0, atol=0)
    assert_close(y[~w], x[~w], rtol=0, atol=0)  # PAD, [CLS], [SEP] in place
    for i in range(len(batch)):
        assert int((y[i] == cr.UNK_ID).sum()) == math.floor(LEVEL * int(w[i].sum()) + 0.5)


@pytest.mark.parametrize("level", [0.5, 1.0])
def test_text_drop_removes_words_and_compacts(batch, level):
    x = batch.inputs["text"]
    out = cr.text_drop(batch, level, gen())
    y, mask = out.inputs["text"], out.valid["text"]
    w = words(batch)
    for i in range(len(batch)):
        if not batch.present["text"][i]:
            assert bool((y[i] == PAD_ID).all())
            assert not bool(mask[i].any())
            continue
        n = int(w[i].sum())
        k = min(math.floor(level * n + 0.5), n - 1)
        old = x[i][batch.valid["text"][i]].tolist()
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
    out = cr.drop_modality(batch, "audio", LEVEL, gen())
    gone = before & ~out.present["audio"]
    assert not bool((out.present["audio"] & ~before).any())
    assert int(gone.sum()) == math.floor(LEVEL * int(before.sum()) + 0.5)
    assert bool((out.inputs["audio"][gone] == 0).all())
    assert not bool(out.valid["audio"][gone].any())
    removed = cr.remove_modality(batch, "audio")
    assert not bool(removed.present["audio"].any())
    assert bool((removed.inputs["audio"] == 0).all())
    assert not bool(removed.valid["audio"].any())
    assert_close(removed.inputs["image"], batch.inputs["image"], rtol=0, atol=0)


def test_parse_noise_spec():
    assert cr.parse_noise_spec("image:gaussian, audio:white") == [("image", "gaussian"), ("audio", "white")]
    assert cr.parse_noise_spec("text") == [("text", c) for c in cr.corruptions_for("text")]
    assert cr.parse_noise_spec("image:blur,image:blur") == [("image", "blur")]
    with pytest.raises(InputError, match="unknown modality 'video'; known: audio, image, text"):
        cr.parse_noise_spec("video:gaussian")
    with pytest.raises(InputError, match="unknown image corruption 'white'; known: blur, gaussian"):
        cr.parse_noise_spec("image:white")
    with pytest.raises(InputError, match="e.g. image:gaussian"):
        cr.parse_noise_spec("image:blur,,")
    with pytest.raises(InputError):
        cr.parse_noise_spec("")
