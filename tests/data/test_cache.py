"""Packed cache: round trip, atomic replacement, corruption detection."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfurnace.data.batch import Sample
from mmfurnace.data.cache import PackedDataset, pack_datasets, verify_packed, write_packed
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError

INFO = DatasetInfo(
    modalities=("audio", "image", "text"),
    num_classes=3,
    multilabel=False,
    class_names=("a", "b", "c"),
    input_shapes={"image": (1, 4, 4), "audio": (None, 3), "text": (None,)},
    input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
    vocab_size=50,
)
SPLITS = ["train", "train", "test", "train", "valid", "test", "train"]


def make_samples(n: int = len(SPLITS), seed: int = 0) -> list[Sample]:
    """Samples with variable-length audio/text, and some modalities missing."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        inputs = {
            "image": torch.rand(1, 4, 4, generator=g),
            "audio": torch.randn(2 + i, 3, generator=g),
            "text": torch.randint(1, 50, (1 + (i * 3) % 5,), generator=g),
        }
        if i % 3 == 1:
            del inputs["audio"]
        if i % 4 == 2:
            del inputs["image"]
        if i == 5:
            del inputs["text"]
        out.append(Sample(inputs=inputs, label=torch.tensor(i % 3), meta={"id": f"s{i}"}))
    return out


def assert_same(got: Sample, want: Sample) -> None:
    assert sorted(got.inputs) == sorted(want.inputs)
    for m, t in want.inputs.items():
        assert got.inputs[m].dtype == t.dtype
        torch.testing.assert_close(got.inputs[m], t, rtol=0, atol=0)
    assert torch.equal(got.label, want.label)
    assert got.meta["id"] == want.meta["id"]


def test_round_trip_every_split(tmp_path: Path) -> None:
    samples = make_samples()
    calls: list[int] = []
    root = write_packed(
        tmp_path / "cache", samples, info=INFO, splits=SPLITS, progress=calls.append
    )
    assert calls == list(range(1, len(samples) + 1))
    for split in ("train", "valid", "test"):
        ds = PackedDataset(root, split)
        want = [s for s, sp in zip(samples, SPLITS, strict=True) if sp == split]
        assert len(ds) == len(want)
        for i, w in enumerate(want):
            assert_same(ds[i], w)
        assert ds.info == INFO
    # Missing modality is absent from the sample, not zero-filled.
    assert "audio" not in PackedDataset(root, "train")[1].inputs


def test_multilabel_round_trip_and_pack_datasets(tmp_path: Path) -> None:
    info = DatasetInfo(
        modalities=("image",),
        num_classes=4,
        multilabel=True,
        class_names=("w", "x", "y", "z"),
        input_shapes={"image": (8,)},
        input_dtypes={"image": "float32"},
    )
    rows = [
        Sample({"image": torch.full((8,), float(i))}, torch.tensor([1.0, 0, i % 2, 1]))
        for i in range(5)
    ]

    class ListDataset(torch.utils.data.Dataset):
        def __init__(self, items: list[Sample]) -> None:
            self.items, self.info = items, info

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> Sample:
            return self.items[i]

    root = pack_datasets(
        tmp_path / "c", {"train": ListDataset(rows[:3]), "test": ListDataset(rows[3:])}
    )
    test = PackedDataset(root, "test")
    assert len(test) == 2
    assert test[1].label.dtype == torch.float32
    torch.testing.assert_close(test[1].label, rows[4].label)
    torch.testing.assert_close(test[0].inputs["image"], rows[3].inputs["image"])
    summary = verify_packed(root)
    assert summary["splits"] == {"train": 3, "test": 2}
    assert summary["class_balance"]["train"] == {"w": 3, "x": 0, "y": 1, "z": 3}


def test_verify_summary(tmp_path: Path) -> None:
    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    summary = verify_packed(root)
    assert summary["num_samples"] == 7
    assert summary["splits"] == {"train": 4, "valid": 1, "test": 2}
    # train rows 0, 1, 3, 6 -> labels 0, 1, 0, 0
    assert summary["class_balance"]["train"] == {"a": 3, "b": 1, "c": 0}
    assert summary["presence"]["audio"] == pytest.approx(5 / 7)
    assert summary["presence"]["text"] == pytest.approx(6 / 7)
    assert summary["arrays"]["audio"]["shape"] == [sum(2 + i for i in range(7) if i % 3 != 1), 3]


def failing(samples: list[Sample], after: int) -> Iterator[Sample]:
    for i, s in enumerate(samples):
        if i == after:
            raise RuntimeError("disk on fire")
        yield s


def test_failed_rewrite_keeps_old_cache_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    old = make_samples(seed=1)
    write_packed(root, old, info=INFO, splits=SPLITS)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_packed(root, failing(make_samples(seed=2), after=4), info=INFO, splits=SPLITS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    ds = PackedDataset(root, "train")
    assert_same(ds[0], old[0])
    verify_packed(root)


def test_failed_first_write_leaves_no_cache(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        write_packed(root, failing(make_samples(), after=2), info=INFO, splits=SPLITS)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="mmfurnace data build"):
        PackedDataset(root, "train")


KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from test_cache import INFO, SPLITS, make_samples
from mmfurnace.data.cache import write_packed

def stream():
    for i, s in enumerate(make_samples(seed=2)):
        if i == 4:
            Path({flag!r}).touch()
            time.sleep(60)  # killed here, mid-write
        yield s

write_packed(Path({root!r}), stream(), info=INFO, splits=SPLITS)
"""


def test_killed_writer_leaves_old_cache_valid(tmp_path: Path) -> None:
    root, flag = tmp_path / "cache", tmp_path / "flag"
    old = make_samples(seed=1)
    write_packed(root, old, info=INFO, splits=SPLITS)
    script = KILLED_WRITER.format(
        repo=str(Path(__file__).parents[2]),
        tests=str(Path(__file__).parent),
        flag=str(flag),
        root=str(root),
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(
            1200
        ):  # wait for the child to be mid-write (bounded, not a timing assertion)
            if flag.exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert flag.exists(), "writer never reached the middle of the write"
        child.kill()  # SIGKILL: no except/finally runs in the child
    finally:
        child.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".cache.staging-")]
    assert len(leftovers) == 1
    assert not (leftovers[0] / "info.json").exists()  # half a cache never looks complete
    assert_same(PackedDataset(root, "train")[0], old[0])  # the old one is untouched
    write_packed(root, make_samples(seed=3), info=INFO, splits=SPLITS)  # cleans the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "flag"]


def test_successful_rewrite_replaces(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    write_packed(root, make_samples(seed=1), info=INFO, splits=SPLITS)
    new = make_samples(seed=2)
    write_packed(root, new, info=INFO, splits=SPLITS)
    assert_same(PackedDataset(root, "valid")[0], new[4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_half_written_dir_is_not_valid(tmp_path: Path) -> None:
    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    (root / "info.json").unlink()  # what a write killed before its last step would look like
    with pytest.raises(InputError, match=r"cache.*mmfurnace data build"):
        PackedDataset(root, "train")


def test_version_mismatch_and_unknown_split(tmp_path: Path) -> None:
    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    with pytest.raises(InputError, match="no split 'dev'.*train, valid, test"):
        PackedDataset(root, "dev")
    header = json.loads((root / "info.json").read_text())
    header["version"] = 99
    (root / "info.json").write_text(json.dumps(header))
    with pytest.raises(
        InputError, match=r"info.json: cache format version 99.*mmfurnace data build"
    ):
        PackedDataset(root, "train")


def test_truncated_array_is_reported(tmp_path: Path) -> None:
    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    data = (root / "audio.npy").read_bytes()
    (root / "audio.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"audio\.npy.*mmfurnace data build"):
        PackedDataset(root, "train")


def rewrite_index(root: Path, **changes: np.ndarray) -> None:
    with np.load(root / "index.npz") as npz:
        index = {k: npz[k] for k in npz.files}
    index.update(changes)
    np.savez(root / "index.npz", **index)


def test_verify_catches_bad_offsets_labels_and_nan(tmp_path: Path) -> None:
    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    with np.load(root / "index.npz") as npz:
        offsets, labels = npz["text_offset"].copy(), npz["labels"].copy()
    offsets[3] = 10_000
    rewrite_index(root, text_offset=offsets)
    with pytest.raises(InputError, match="text of sample 3 spans rows"):
        verify_packed(root)

    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    labels[2] = 7
    rewrite_index(root, labels=labels)
    with pytest.raises(InputError, match="sample 2 has label 7"):
        verify_packed(root)

    samples = make_samples()
    samples[0].inputs["image"][0, 1, 1] = float("nan")
    root = write_packed(tmp_path / "cache", samples, info=INFO, splits=SPLITS)
    with pytest.raises(InputError, match=r"image\.npy: NaN"):
        verify_packed(root)


def test_write_rejects_inconsistent_samples(tmp_path: Path) -> None:
    samples = make_samples()
    samples[3].inputs["audio"] = torch.zeros(4, 5)  # feature dim 5, earlier ones 3
    with pytest.raises(InputError, match="sample 3 .*audio has dtype float32 and shape"):
        write_packed(tmp_path / "c", samples, info=INFO, splits=SPLITS)
    samples = make_samples()
    samples[0].label = torch.tensor(3)
    with pytest.raises(InputError, match="label 3 is outside 0..2"):
        write_packed(tmp_path / "c", samples, info=INFO, splits=SPLITS)
    with pytest.raises(InputError, match="7 samples but 3 split names|more samples than split"):
        write_packed(tmp_path / "c", make_samples(), info=INFO, splits=SPLITS[:3])
    assert list(tmp_path.iterdir()) == []


def test_pickle_does_not_carry_the_arrays(tmp_path: Path) -> None:
    samples = make_samples()
    root = write_packed(tmp_path / "cache", samples, info=INFO, splits=SPLITS)
    ds = PackedDataset(root, "train")
    ds[0]  # opens the memory maps
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None
    assert_same(clone[3], samples[6])


def test_restricting_modalities(tmp_path: Path) -> None:
    root = write_packed(tmp_path / "cache", make_samples(), info=INFO, splits=SPLITS)
    ds = PackedDataset(root, "train", modalities=["text"])
    assert ds.info.modalities == ("text",)
    assert sorted(ds[0].inputs) == ["text"]
    with pytest.raises(InputError, match="not in this cache"):
        PackedDataset(root, "train", modalities=["video"])
