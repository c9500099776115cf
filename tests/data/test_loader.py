"""make_loader over a packed cache: Batches with masks, workers, reproducible order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfurnace.data.batch import Batch, Sample
from mmfurnace.data.cache import PackedDataset, write_packed
from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import DATASETS, build_dataset
from mmfurnace.data.info import DatasetInfo
from mmfurnace.data.loader import make_loader
from mmfurnace.errors import ConfigError, InputError

INFO = DatasetInfo(
    modalities=("audio", "image", "text"),
    num_classes=4,
    multilabel=False,
    class_names=("0", "1", "2", "3"),
    input_shapes={"image": (1, 3, 3), "audio": (None, 2), "text": (None,)},
    input_dtypes={"image": "float32", "audio": "float32", "text": "int64"},
    vocab_size=20,
)
N = 12


def sample(i: int) -> Sample:
    """Sample i: image filled with i, audio of i % 4 + 1 frames, text of i % 3 + 1 tokens.

    Audio is missing for every third sample, text for every fifth.
    """
    inputs = {
        "image": torch.full((1, 3, 3), float(i)),
        "audio": torch.full((i % 4 + 1, 2), float(i)),
        "text": torch.full((i % 3 + 1,), i + 1, dtype=torch.int64),
    }
    if i % 3 == 0:
        del inputs["audio"]
    if i % 5 == 0:
        del inputs["text"]
    return Sample(inputs=inputs, label=torch.tensor(i % 4), meta={"id": str(i)})


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    return write_packed(
        tmp_path / "packed", (sample(i) for i in range(N)), info=INFO, splits=["train"] * N
    )


def check_batch(batch: Batch) -> None:
    """Every row of the batch agrees with the sample it came from (ids from image values)."""
    ids = batch.inputs["image"][:, 0, 0, 0].long().tolist()
    assert batch.labels.tolist() == [i % 4 for i in ids]
    for row, i in enumerate(ids):
        s = sample(i)
        assert batch.present["audio"][row].item() == ("audio" in s.inputs)
        assert batch.present["text"][row].item() == ("text" in s.inputs)
        assert batch.present["image"][row].item()
        if "audio" in s.inputs:
            frames = s.inputs["audio"].shape[0]
            assert batch.valid["audio"][row].sum().item() == frames
            torch.testing.assert_close(batch.inputs["audio"][row, :frames], s.inputs["audio"])
        else:
            assert not batch.valid["audio"][row].any()
        if "text" in s.inputs:
            tokens = s.inputs["text"].shape[0]
            assert batch.inputs["text"][row, :tokens].tolist() == s.inputs["text"].tolist()
            assert (batch.inputs["text"][row, tokens:] == 0).all()


def test_batches_carry_masks(packed: Path) -> None:
    ds = PackedDataset(packed, "train")
    loader = make_loader(ds, modalities=["audio", "image", "text"], batch_size=5, shuffle=False)
    batches = list(loader)
    assert [len(b) for b in batches] == [5, 5, 2]
    assert all(isinstance(b, Batch) for b in batches)
    assert batches[0].present["audio"].tolist() == [False, True, True, False, True]
    assert batches[0].present["text"].tolist() == [False, True, True, True, True]
    # padded to the longest present one (i=2, 3 frames); i=3 would have 4 but is absent
    assert batches[0].inputs["audio"].shape == (5, 3, 2)
    for b in batches:
        check_batch(b)


def test_two_workers_same_batches_as_none(packed: Path) -> None:
    ds = PackedDataset(packed, "train")
    common = {"modalities": ["audio", "image", "text"], "batch_size": 4, "shuffle": True, "seed": 7}
    single = [b.inputs["image"][:, 0, 0, 0].tolist() for b in make_loader(ds, **common)]
    loader = make_loader(ds, num_workers=2, **common)
    multi = []
    for b in loader:
        check_batch(b)
        multi.append(b.inputs["image"][:, 0, 0, 0].tolist())
    assert multi == single
    assert sorted(x for b in multi for x in b) == list(map(float, range(N)))
    again = [b.inputs["image"][:, 0, 0, 0].tolist() for b in make_loader(ds, **common)]
    assert again == single
    other = [
        b.inputs["image"][:, 0, 0, 0].tolist() for b in make_loader(ds, **{**common, "seed": 8})
    ]
    assert other != single


def test_declared_but_absent_modality_is_marked(packed: Path) -> None:
    ds = PackedDataset(packed, "train", modalities=["image"])
    batch = next(iter(make_loader(ds, modalities=["audio", "image"], batch_size=3, shuffle=False)))
    assert "audio" not in batch.inputs
    assert batch.present["audio"].tolist() == [False, False, False]


def test_drop_last_and_bad_settings(packed: Path) -> None:
    ds = PackedDataset(packed, "train")
    loader = make_loader(ds, modalities=["image"], batch_size=5, shuffle=False, drop_last=True)
    assert [len(b) for b in loader] == [5, 5]
    with pytest.raises(InputError, match="batch_size must be > 0"):
        make_loader(ds, modalities=["image"], batch_size=0, shuffle=False)


def test_build_dataset_packed_and_digits_av(packed: Path) -> None:
    assert {"avmnist", "digits-av", "manifest", "mmimdb", "packed"} <= set(DATASETS.names())
    for root in (packed, packed.parent):  # the cache itself, or a folder holding packed/
        ds = build_dataset(DataConfig(dataset="digits-av", root=root, modalities=["text"]), "train")
        assert len(ds) == N
        assert ds.info.modalities == ("text",)
    with pytest.raises(InputError, match="mmfurnace data build"):
        build_dataset(DataConfig(dataset="packed", root=packed / "nope"), "train")
    with pytest.raises(ConfigError, match="unknown dataset"):
        DATASETS["nope"]


def test_packed_cache_built_with_other_preprocessing_is_refused(tmp_path: Path) -> None:
    import json

    from mmfurnace.data.datasets import PACKED_PREPROCESSING, build_preprocessors

    built = DataConfig(dataset="packed", root=tmp_path, modalities=["audio", "image"])
    settings = {m: p.to_dict() for m, p in build_preprocessors(built, ["audio", "image"], manifest=tmp_path).items()}
    settings["text"] = {"max_length": built.text.max_length}
    root = write_packed(tmp_path / "packed", (sample(i) for i in range(N)), info=INFO, splits=["train"] * N,
                        extra_files={PACKED_PREPROCESSING: json.dumps(settings).encode()})
    assert len(build_dataset(built, "train")) == N  # the config it was built with
    other = built.model_copy(update={"audio": built.audio.model_copy(update={"n_mfcc": built.audio.n_mfcc + 4})})
    with pytest.raises(ConfigError, match=r"data\.audio\.n_mfcc: \d+ in the config, \d+ in the cache.*--force"):
        build_dataset(other, "train")
    longer = built.model_copy(update={"modalities": ["text"],
                                      "text": built.text.model_copy(update={"max_length": 7})})
    with pytest.raises(ConfigError, match="data.text.max_length: 7 in the config"):
        build_dataset(longer, "train")
    (root / PACKED_PREPROCESSING).unlink()  # a cache from before the file: nothing to compare
    assert len(build_dataset(other, "train")) == N
