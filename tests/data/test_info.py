"""check_same_data: a model refuses data it cannot read (other classes, another vocabulary)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mmfurnace.data.info import TOKENIZER_KEY, DatasetInfo, check_same_data
from mmfurnace.errors import InputError
from mmfurnace.train.checkpoint_eval import evaluate_checkpoint

INFO = DatasetInfo(
    modalities=("image", "text"), num_classes=2, multilabel=False, class_names=("a", "b"),
    input_shapes={"image": (1, 8, 8), "text": (None,)}, input_dtypes={"image": "float32", "text": "int64"},
    vocab_size=16, extra={TOKENIZER_KEY: "1" * 64},
)


def test_same_vocabulary_or_unknown_one_passes() -> None:
    check_same_data(INFO, INFO, where="x")
    check_same_data(INFO, replace(INFO, extra={}), where="x")  # packed before fingerprints existed
    check_same_data(INFO, replace(INFO, modalities=("image",), extra={TOKENIZER_KEY: "2" * 64}), where="x")


def test_another_vocabulary_or_other_classes_are_refused() -> None:
    with pytest.raises(InputError, match=r"valid split: its text was tokenized with another vocabulary \(tokenizer 222222222222\)"):
        check_same_data(INFO, replace(INFO, extra={TOKENIZER_KEY: "2" * 64}), where="the valid split")
    with pytest.raises(InputError, match=r"trained on classes \['a', 'b'\], this data has \['b', 'a'\]"):
        check_same_data(INFO, replace(INFO, class_names=("b", "a")), where="x")


def test_evaluating_a_checkpoint_on_another_build_fails_clearly(tmp_path, monkeypatch) -> None:
    from mmfurnace.train.recipe import train
    from tests.train.tinydata import INFO as TINY
    from tests.train.tinydata import TinyDataset, tiny_run_config

    class Build(TinyDataset):
        def __init__(self, size: int, *, seed: int, vocabulary: str) -> None:
            super().__init__(size, seed=seed)
            self.info = replace(TINY, extra={TOKENIZER_KEY: vocabulary * 64})

    data = {s: Build(12, seed=i, vocabulary="a") for i, s in enumerate(("train", "valid", "test"))}
    torch.manual_seed(0)
    best = train(tiny_run_config(tmp_path / "run", epochs=1), progress=False, datasets=data).out_dir / "best"
    monkeypatch.setattr("mmfurnace.train.checkpoint_eval.build_dataset",
                        lambda cfg, split: Build(6, seed=9, vocabulary="b"))
    with pytest.raises(InputError, match="another vocabulary"):
        evaluate_checkpoint(best, split="valid")
    monkeypatch.setattr("mmfurnace.train.checkpoint_eval.build_dataset",
                        lambda cfg, split: Build(6, seed=9, vocabulary="a"))
    assert 0.0 <= evaluate_checkpoint(best, split="valid")["metrics"]["accuracy"] <= 1.0
