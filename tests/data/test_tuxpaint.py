"""tuxpaint: builds from a small fake stamps tree in the package's real layout, and (slow) from
the installed tuxpaint-stamps-default when it is there."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from pydantic import ValidationError

from mmfurnace.config import load_run_config
from mmfurnace.data.builtin import tuxpaint_stamps as ts
from mmfurnace.data.builtin.staging import Skipped
from mmfurnace.data.builtin.tuxpaint import TuxpaintOptions, build_tuxpaint_raw
from mmfurnace.data.cache import read_header
from mmfurnace.data.prepare import build_builtin
from mmfurnace.errors import ConfigError, InputError, MissingDependencyError

REPO = Path(__file__).resolve().parents[2]
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
       '<circle cx="40" cy="30" r="25" fill="#c00"/></svg>')  # fmt: skip


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (60, 40)) -> None:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (size[0] // 2, size[1] // 2), (*color, 255)), (5, 5))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _speech(path: Path, pitch: float) -> None:
    t = np.arange(8000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32), 16000,
             format="WAV" if path.suffix == ".wav" else "OGG",
             subtype="PCM_16" if path.suffix == ".wav" else "VORBIS")  # fmt: skip


def _stamp(folder: Path, name: str, english: str, *, french: str | None = None,
           speech: tuple[str, ...] = ("fr",), image: str = "png") -> None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    if image == "png":
        _png(folder / f"{name}.png", (len(name) * 20 % 255, 90, 30))
    elif image == "svg":
        (folder / f"{name}.svg").write_text(SVG.format(w="60pt", h="45pt"))
    lines = [english] + ([f"fr.utf8={french}"] if french else []) + ["de.utf8=Ein Ding."]
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for lang in speech:
        suffix = "" if lang == "en" else f"_{lang}"
        _speech(folder / f"{name}_desc{suffix}.ogg", 200 + 10 * len(name))


def make_stamps(root: Path) -> Path:
    """Three categories of stamps with the package's quirks: nested folders, an SVG in pt,
    a PNG+SVG stamp, a mirror image, a sound effect, a stamp without speech, a stamp whose
    speech has no image, one with only a Greek description, and a stray file at the top."""
    for i, name in enumerate(["koala", "kangaroo", "wombat", "bee", "ant", "owl"]):
        _stamp(root / "animals" / ("cartoon" if i % 2 else "."), name, f"A {name}.",
               french=f"Un {name}.", speech=("fr", "en"))  # fmt: skip
    _png(root / "animals" / "koala_mirror.png", (1, 2, 3))
    _speech(root / "animals" / "koala.ogg", 300)  # a sound effect, not speech
    for name in ["apple_red", "apple_green", "pear", "plum", "fig", "kiwi"]:
        _stamp(root / "food" / "fruit", name, f"A {name.replace('_', ' ')}.",
               image="svg" if name == "pear" else "png")  # fmt: skip
    (root / "food" / "fruit" / "apple_red.svg").write_text(SVG.format(w="80", h="60"))
    for name in ["rocket1", "rocket2", "moon", "star", "comet", "planet"]:
        _stamp(root / "space", name, f"The {name}.", speech=() if name == "moon" else ("fr",))
    _speech(root / "space" / "meteor_desc_fr.ogg", 500)  # speech, no image nor text
    _speech(root / "space" / "nebula_desc_el.ogg", 510)  # only Greek: nothing in fr
    _png(root / "stray.png", (9, 9, 9))
    return root


@pytest.fixture(scope="module")
def stamps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stamps(tmp_path_factory.mktemp("stamps"))


@pytest.fixture(scope="module")
def built(stamps: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("resvg_py")
    return build_tuxpaint_raw(tmp_path_factory.mktemp("tux") / "tux",
                              options=TuxpaintOptions(stamps=stamps))  # fmt: skip


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_scan_finds_stamps_not_mirrors_or_effects(stamps: Path) -> None:
    skipped = Skipped()
    found = {s.key: s for s in ts.scan_stamps(stamps, skipped)}
    assert "animals/koala_mirror" not in found
    koala = found["animals/koala"]
    assert set(koala.images) == {"png"}
    assert set(koala.speech) == {"fr", "en"}  # koala.ogg, the sound effect, is not speech
    assert set(found["food/fruit/apple_red"].images) == {"png", "svg"}
    assert found["space/meteor"].images == {}
    assert skipped.count("stamp file outside any category folder") == 1
    assert {s.category for s in found.values()} == {"animals", "food", "space"}


def test_manifest_labels_texts_and_missing_modalities(built: Path) -> None:
    rows = {r["id"]: r for r in _rows(built)}
    prov = {p["stamp"]: rows[p["id"]] for p in _rows(built.parent / "provenance.jsonl")}
    assert json.loads((built.parent / "classes.json").read_text()) == ["animals", "food", "space"]
    assert prov["animals/koala"]["label"] == "animals"
    assert prov["animals/koala"]["text"] == "A koala."
    assert prov["food/fruit/pear"]["label"] == "food"
    assert "audio" not in prov["space/moon"]  # no speech shipped: a missing modality
    meteor = prov["space/meteor"]  # speech only: kept, image and text missing
    assert "image" not in meteor
    assert "text" not in meteor
    assert meteor["audio"].endswith(".ogg")
    assert "space/nebula" not in prov  # nothing in the chosen languages
    build = json.loads((built.parent / "build.json").read_text())
    assert build["skipped"]["stamp with no usable modality in the chosen languages"]["count"] == 1
    assert build["counts"]["image_sources"] == {"png": 17, "svg": 1}
    assert build["attribution"].endswith("GPL-2")


def test_images_are_white_squares_cropped_to_the_stamp(built: Path) -> None:
    for row in _rows(built):
        if "image" not in row:
            continue
        image = Image.open(built.parent / str(row["image"]))
        assert image.mode == "RGB"
        assert image.width == image.height
        pixels = np.asarray(image)
        assert (pixels[0, 0] == 255).all(), "transparent background not composited on white"


def test_svg_in_points_is_rasterized_at_the_asked_size(stamps: Path) -> None:
    pytest.importorskip("resvg_py")
    image = ts.load_image(stamps / "food" / "fruit" / "pear.svg", max_side=128)
    assert image.size[0] == image.size[1] <= 128
    red = np.asarray(image)[..., 0] > 150
    assert red.mean() > 0.3, "the circle should fill most of the cropped square"


def test_text_and_speech_language_options(stamps: Path, tmp_path: Path) -> None:
    pytest.importorskip("resvg_py")
    opts = TuxpaintOptions(stamps=stamps, text_language="fr", speech_language="en", svg="skip")
    manifest = build_tuxpaint_raw(tmp_path / "fr", options=opts)
    rows = {p["stamp"]: r for p, r in zip(_rows(manifest.parent / "provenance.jsonl"),
                                         _rows(manifest), strict=True)}  # fmt: skip
    assert rows["animals/koala"]["text"] == "Un koala."
    assert "text" not in rows["space/star"]  # no French line in its description
    assert "audio" in rows["animals/koala"]
    assert "audio" not in rows["space/star"]  # speech only in fr
    assert "food/fruit/pear" not in rows  # SVG-only image left out, no French text or speech
    build = json.loads((manifest.parent / "build.json").read_text())
    assert build["skipped"]["SVG-only image left out (svg=skip)"]["count"] == 1


def test_description_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("A koala.\nfr.utf8=Un koala.\nen_GB.utf8=A koala, mate.\nde.utf8=\n")
    assert ts.read_description(path, "en") == "A koala."
    assert ts.read_description(path, "en_GB") == "A koala, mate."
    assert ts.read_description(path, "de") is None
    assert ts.read_description(path, "ja") is None
    path.write_bytes(b"\xff\xfe broken")
    with pytest.raises(InputError, match="x.txt"):
        ts.read_description(path, "en")


def test_groups_stay_in_one_split_and_every_class_is_in_every_split(tmp_path: Path) -> None:
    stamps = [ts.Stamp(category=c, folder=c, name=n) for c in ("a", "b")
              for n in ("rocket1", "rocket2", "rocket3", "moon", "sun", "star", "comet", "cat",
                        "dog_big", "dog_small", "owl", "bee")]  # fmt: skip
    for seed in range(5):
        splits = ts.group_split(stamps, valid=0.15, test=0.15, rng=np.random.default_rng(seed))
        by_group: dict[str, set[str]] = {}
        for s, split in zip(stamps, splits, strict=True):
            by_group.setdefault(ts.group_key(s), set()).add(split)
        assert all(len(v) == 1 for v in by_group.values())
        for c in ("a", "b"):
            assert {sp for s, sp in zip(stamps, splits, strict=True) if s.category == c} == {
                "train", "valid", "test"}
    assert ts.group_key(ts.Stamp("x", "x/cartoon", "kangaroo-silo")) == "x/kangaroo"
    assert ts.group_key(ts.Stamp("x", "x", "W_filled")) == ts.group_key(ts.Stamp("x", "x", "w_outline"))


def test_folds_are_stratified_keep_groups_whole_and_even_out_sizes() -> None:
    stamps = [ts.Stamp(category=c, folder=c, name=n) for c in ("a", "b")
              for n in ("rocket1", "rocket2", "rocket3", "moon", "sun", "star", "comet", "cat",
                        "dog_big", "dog_small", "owl", "bee")]  # fmt: skip
    stamps += [ts.Stamp(category="c", folder="c", name=n) for n in ("x", "y")]
    for seed in range(5):
        folds = ts.group_folds(stamps, folds=3, rng=np.random.default_rng(seed))
        by_group: dict[str, set[int]] = {}
        for s, fold in zip(stamps, folds, strict=True):
            by_group.setdefault(ts.group_key(s), set()).add(fold)
        assert all(len(v) == 1 for v in by_group.values())
        # each of a and b: the 3 rockets in one fold, the 7 other groups fill the other two
        # up to 4 stamps a fold; c's two stamps go to the two folds that are smallest then
        for c in ("a", "b"):
            assert sorted(Counter(f for s, f in zip(stamps, folds, strict=True)
                                  if s.category == c).values()) == [4, 4, 4]  # fmt: skip
        assert sorted(Counter(folds).values()) == [8, 9, 9]
    with pytest.raises(InputError, match="at least 2 folds"):
        ts.group_folds(stamps, folds=1, rng=np.random.default_rng(0))


def test_a_fold_build_tests_one_fold_and_validates_on_the_next(stamps: Path, tmp_path: Path) -> None:
    pytest.importorskip("resvg_py")
    test, valid, stamp_of = [], [], {}
    for fold in range(3):
        opts = TuxpaintOptions(stamps=stamps, folds=3, fold=fold)
        manifest = build_tuxpaint_raw(tmp_path / f"fold{fold}", options=opts)
        rows = _rows(manifest)
        assert {r["split"] for r in rows} == {"train", "valid", "test"}
        test.append({r["id"] for r in rows if r["split"] == "test"})
        valid.append({r["id"] for r in rows if r["split"] == "valid"})
        for p in _rows(manifest.parent / "provenance.jsonl"):
            assert stamp_of.setdefault(p["id"], p["stamp"]) == p["stamp"]  # the same ids
        build = json.loads((manifest.parent / "build.json").read_text())
        assert (build["options"]["folds"], build["options"]["fold"]) == (3, fold)
    # one partition: every stamp tested exactly once; fold k validates on fold k+1's test rows
    assert sorted(i for t in test for i in t) == sorted(stamp_of)
    assert valid == [test[1], test[2], test[0]]
    with pytest.raises(ValidationError, match="fold must be below folds"):
        TuxpaintOptions(folds=3, fold=3)
    with pytest.raises(ValidationError, match="fold is set but folds is not"):
        TuxpaintOptions(fold=1)


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path) -> None:
    pytest.importorskip("resvg_py")
    root = make_stamps(tmp_path / "stamps")
    (root / "animals" / "koala.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "animals" / "koala_desc_fr.ogg").write_bytes(b"OggS broken")
    (root / "food" / "fruit" / "pear.svg").write_text("<svg this is not xml")
    manifest = build_tuxpaint_raw(tmp_path / "out", options=TuxpaintOptions(stamps=root))
    skipped = json.loads((manifest.parent / "build.json").read_text())["skipped"]
    assert skipped["corrupt PNG image"]["count"] == 1
    assert skipped["corrupt OGG speech"]["count"] == 1
    assert skipped["corrupt SVG image"]["count"] == 1
    rows = {p["stamp"]: r for p, r in zip(_rows(manifest.parent / "provenance.jsonl"),
                                         _rows(manifest), strict=True)}  # fmt: skip
    koala = rows["animals/koala"]  # kept: its text is fine
    assert "image" not in koala
    assert "audio" not in koala
    assert koala["text"] == "A koala."


def test_missing_package_and_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="apt-get install --no-install-recommends "
                                                     "tuxpaint-stamps-default"):  # fmt: skip
        build_tuxpaint_raw(tmp_path / "x", options=TuxpaintOptions(stamps=tmp_path / "none"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="speech_lang: unknown key"):
        build_builtin("tuxpaint", tmp_path / "y", data_cfg=load_run_config(None).data,
                      options={"speech_lang": "fr"})  # fmt: skip


def test_missing_rasterizer_names_the_fix(stamps: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "resvg_py", None)
    with pytest.raises(MissingDependencyError, match="resvg-py.*svg=skip"):
        ts.rasterize_svg(stamps / "food" / "fruit" / "pear.svg", size=64)


def test_packs_at_224_rgb_from_raw(built: Path, tmp_path: Path) -> None:
    from mmfurnace.data.prepare import pack_manifest

    cfg = load_run_config(REPO / "configs" / "tuxpaint.yaml").data
    cfg.image = cfg.image.model_copy(update={"size": (224, 224)})
    packed = pack_manifest(built, tmp_path / "packed", data_cfg=cfg)
    header = read_header(packed)
    assert header["arrays"]["image"]["shape"][1:] == [224, 224]
    assert header["info"]["input_shapes"]["image"] == [3, 224, 224]
    assert header["info"]["class_names"] == ["animals", "food", "space"]
    assert header["num_samples"] == len(_rows(built))


@pytest.mark.slow
@pytest.mark.skipif(not (ts.STAMPS / "animals").is_dir(),
                    reason="tuxpaint-stamps-default is not installed (make system-deps)")  # fmt: skip
def test_real_stamps_build(tmp_path: Path) -> None:
    pytest.importorskip("resvg_py")
    root = build_builtin("tuxpaint", tmp_path / "tux", data_cfg=load_run_config(
        REPO / "configs" / "tuxpaint.yaml").data, limit_per_class=6)  # fmt: skip
    build = json.loads((root / "raw" / "build.json").read_text())
    assert build["counts"]["stamps_scanned"] >= 80
    classes = json.loads((root / "raw" / "classes.json").read_text())
    assert len(classes) == 16
    assert "animals" in classes
    assert "vehicles" in classes
    header = read_header(root / "packed")
    assert sorted(header["arrays"]) == ["audio", "image", "text"]
    assert set(header["counts"]) == {"train", "valid", "test"}
    assert not any("corrupt" in reason for reason in build["skipped"])
