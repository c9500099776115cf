"""digits-av raw build: a small real build (3 images per class) checked file by file."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmfurnace.data.builtin import CLASS_NAMES, Degradation, build_digits_av_raw, speech
from mmfurnace.data.builtin.number_words import NUMBER_WORDS, add_typos
from mmfurnace.data.builtin.speech import VOICE_VARIANTS
from mmfurnace.errors import InputError, MissingDependencyError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng); digits-av audio needs it",
)

PER_CLASS = 3
PAIRINGS = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits-av"
    return build_digits_av_raw(
        out, seed=7, pairings_per_train_image=PAIRINGS, limit_per_class=PER_CLASS
    )


def _rows(manifest: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@needs_espeak
def test_layout_and_manifest_fields(built: Path) -> None:
    raw = built.parent
    assert built == raw / "manifest.jsonl"
    assert json.loads((raw / "classes.json").read_text()) == list(CLASS_NAMES)
    assert CLASS_NAMES[0] == "zero"
    assert CLASS_NAMES[9] == "nine"
    rows = _rows(built)
    # 1 train, 1 valid, 1 test image per class; train images paired PAIRINGS times.
    assert len(rows) == 10 * (PAIRINGS + 2)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "split", "image", "audio", "text", "label"}
        assert r["split"] in ("train", "valid", "test")
        assert isinstance(r["label"], int)
        assert 0 <= r["label"] <= 9
        assert isinstance(r["text"], str)
        assert r["text"].strip()
        assert not Path(r["image"]).is_absolute()
        assert (raw / r["image"]).is_file()
        assert not Path(r["audio"]).is_absolute()
        assert (raw / r["audio"]).is_file()
    build = json.loads((raw / "build.json").read_text())
    assert build["seed"] == 7
    assert build["counts"]["samples"] == {"train": 20, "valid": 10, "test": 10}
    assert "espeak-ng" in build["versions"]
    assert build["image_pca_energy_kept"] > 0
    assert not list(raw.parent.parent.glob(".*building*")), "temporary build folder left behind"


@needs_espeak
def test_labels_balanced_per_split(built: Path) -> None:
    rows = _rows(built)
    for split, per_label in (("train", PAIRINGS), ("valid", 1), ("test", 1)):
        counts = Counter(r["label"] for r in rows if r["split"] == split)
        assert counts == dict.fromkeys(range(10), per_label)


@needs_espeak
def test_splits_disjoint_in_images(built: Path) -> None:
    rows = _rows(built)
    images = {s: {r["image"] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    assert not images["train"] & images["valid"]
    assert not images["train"] & images["test"]
    assert not images["valid"] & images["test"]


@needs_espeak
def test_images_decode_as_28x28_grayscale(built: Path) -> None:
    for r in _rows(built):
        with Image.open(built.parent / r["image"]) as im:
            assert im.format == "PNG"
            assert im.mode == "L"
            assert im.size == (28, 28)
            assert np.asarray(im).std() > 0


@needs_espeak
def test_audio_is_16k_mono_and_not_silent(built: Path) -> None:
    for r in _rows(built):
        audio, rate = sf.read(built.parent / r["audio"], dtype="float32")
        assert rate == 16000
        assert audio.ndim == 1
        assert 0.2 < len(audio) / rate < 3.0
        assert float(np.sqrt(np.mean(audio**2))) > 1e-3


@needs_espeak
def test_texts_are_corrupted_number_words(built: Path) -> None:
    rows = _rows(built)
    all_words = {w for words in NUMBER_WORDS.values() for w in words}
    plain = sum(r["text"] in all_words for r in rows)
    assert plain < len(rows) / 2, "text should mostly not be the plain number word"
    assert len({r["text"] for r in rows}) > len(rows) // 2


@needs_espeak
def test_audio_voices_disjoint_between_splits(built: Path) -> None:
    prov = [
        json.loads(line) for line in (built.parent / "provenance.jsonl").read_text().splitlines()
    ]
    split_of = {r["id"]: r["split"] for r in _rows(built)}
    variants = {s: set() for s in ("train", "valid", "test")}
    for p in prov:
        variants[split_of[p["id"]]].add(p["voice"].split("+", 1)[1])
    for split, used in variants.items():
        assert used <= set(VOICE_VARIANTS[split])
    assert not set(VOICE_VARIANTS["train"]) & set(VOICE_VARIANTS["test"])


@needs_espeak
def test_same_seed_same_manifest_other_seed_differs(built: Path, tmp_path: Path) -> None:
    again = build_digits_av_raw(
        tmp_path / "a", seed=7, pairings_per_train_image=PAIRINGS, limit_per_class=PER_CLASS
    )
    assert again.read_text() == built.read_text()
    first = sorted(built.parent.glob("audio/*.wav"))[0]
    assert (again.parent / "audio" / first.name).read_bytes() == first.read_bytes()
    other = build_digits_av_raw(
        tmp_path / "b", seed=8, pairings_per_train_image=PAIRINGS, limit_per_class=PER_CLASS
    )
    assert other.read_text() != built.read_text()


@needs_espeak
def test_existing_output_is_kept_unless_overwrite(built: Path) -> None:
    out_dir = built.parent.parent
    before = built.read_text()
    with pytest.raises(InputError, match="already exists"):
        build_digits_av_raw(out_dir, seed=7, limit_per_class=PER_CLASS)
    assert built.read_text() == before


@needs_espeak
def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="limit_per_class"):
        build_digits_av_raw(tmp_path / "x", limit_per_class=2)
    with pytest.raises(InputError, match="pairings_per_train_image"):
        build_digits_av_raw(tmp_path / "x", pairings_per_train_image=0)
    assert not (tmp_path / "x").exists()


@needs_espeak
def test_voice_variants_exist_in_espeak() -> None:
    # espeak-ng silently falls back to its default voice for an unknown variant.
    listed = subprocess.run(
        ["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True
    ).stdout
    files = {tok.removeprefix("!v/") for tok in listed.split() if tok.startswith("!v/")}
    for variants in VOICE_VARIANTS.values():
        assert set(variants) <= files


def test_typos_change_words_but_keep_them_nonempty() -> None:
    rng = np.random.default_rng(0)
    assert add_typos("seven", 0.0, rng) == "seven"
    outs = [add_typos("seven", 0.9, rng) for _ in range(50)]
    assert all(outs)
    assert sum(o != "seven" for o in outs) > 40


@needs_espeak
def test_interrupted_build_leaves_nothing_and_keeps_old_data(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(speech, "synthesize_many", boom)
    with pytest.raises(KeyboardInterrupt):
        build_digits_av_raw(tmp_path / "new", limit_per_class=PER_CLASS)
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []
    out_dir = built.parent.parent
    before = built.read_text()
    with pytest.raises(KeyboardInterrupt):
        build_digits_av_raw(out_dir, seed=7, limit_per_class=PER_CLASS, overwrite=True)
    assert built.read_text() == before
    assert sorted(p.name for p in out_dir.parent.iterdir()) == [out_dir.name]


def test_missing_espeak_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="apt-get install espeak-ng"):
        speech.find_espeak()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pca_components", 0),
        ("noise_kinds", ("hum",)),
        ("typo_rate", (0.5, 0.2)),
        ("pitch", (0, 120)),
    ],
)
def test_bad_degradation_is_rejected(field: str, value: object) -> None:
    with pytest.raises(InputError, match=field):
        Degradation(**{field: value})
