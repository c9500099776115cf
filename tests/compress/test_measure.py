"""Measurement helpers: MAC counts, sizes, SQNR, batch-1 splitting, interleaved timing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmfurnace.compress.measure import (
    benchmark,
    count_macs,
    count_params,
    cpu_info,
    size_on_disk,
    split_samples,
    sqnr_db,
)
from mmfurnace.data.batch import Batch


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward_batch(self, batch: Batch) -> torch.Tensor:
        return self.fc(batch.inputs["image"].flatten(1))


def _batch(n: int) -> Batch:
    return Batch(inputs={"image": torch.randn(n, 1, 3, 4)}, valid={},
                 present={"image": torch.ones(n, dtype=torch.bool)}, labels=torch.zeros(n, dtype=torch.long))


def test_macs_are_per_sample_multiply_accumulates():
    assert count_macs(_Linear(), _batch(7)) == 12 * 5


def test_params_and_nonzero_params():
    model = _Linear()
    with torch.no_grad():
        model.fc.weight[:, :6] = 0
    assert count_params(model) == 65
    assert count_params(model, nonzero=True) == 65 - 30


def test_sqnr():
    ref = torch.ones(100)
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)


def test_size_on_disk_sums_a_directory(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"x" * 5)
    assert size_on_disk(tmp_path) == 15
    assert size_on_disk(tmp_path / "a") == 10


def test_split_samples_trims_padding_and_keeps_absence(test_batches):
    batch = test_batches[0]
    singles = split_samples(batch, 12)
    assert len(singles) == 12
    for i, single in enumerate(singles):
        assert len(single) == 1
        for m in ("audio", "text"):
            if bool(batch.present[m][i]):
                assert single.valid[m].all()  # a lone request carries no padding
                assert single.inputs[m].shape[1] == int(batch.valid[m][i].sum())
            else:
                assert not bool(single.present[m][0])


def test_benchmark_times_every_predictor_on_the_same_inputs():
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def make(name):
        def predict(batch):
            seen[name].append(len(batch))
            return torch.zeros(len(batch), 2)

        return predict

    timings = benchmark({"a": make("a"), "b": make("b")}, singles=[_batch(1)] * 3, batch=_batch(8), rounds=4,
                        warmup=1, calls_per_round=3)
    assert set(timings) == {"a", "b"}
    assert seen["a"] == seen["b"]  # same calls, same sizes, in the same rounds
    assert seen["a"].count(1) == 3 + 4  # warm-up: all 3 requests; then one per round
    assert seen["a"].count(8) == 1 + 4 * (1 + 3)  # warm-up; each round: 1 untimed + 3 timed
    assert all(t.throughput > 0 and t.p95_ms >= t.p50_ms for t in timings.values())


def test_cpu_info_lists_isa_flags():
    info = cpu_info()
    assert isinstance(info["isa"], list)
    assert all(isinstance(f, str) for f in info["isa"])
