"""The preprocessing pool: raw files -> the same arrays in threads and in processes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mmfurnace.errors import ConfigError, InputError
from mmfurnace.serve.preprocess import Preprocessor, PreprocessPool, PreprocessSettings

from .conftest import PREPROCESSING, png_bytes, wav_bytes


def run_pool(settings, mode, rows):
    pool = PreprocessPool(settings, workers=2, mode=mode)
    pool.start()
    try:
        async def main():
            return await asyncio.gather(*(pool.run(r) for r in rows), return_exceptions=True)

        return asyncio.run(main())
    finally:
        pool.close()


@pytest.mark.slow
def test_process_pool_gives_the_thread_pools_arrays_and_errors(samples, tokenizer) -> None:
    settings = PreprocessSettings.from_data_settings(PREPROCESSING, ["audio", "image", "text"], tokenizer)
    rows = [*samples, {"image": b"not an image"}]
    threads = run_pool(settings, "thread", rows)
    processes = run_pool(settings, "process", rows)
    for t, p in zip(threads[:-1], processes[:-1], strict=True):
        assert sorted(t) == sorted(p)
        for m in t:
            np.testing.assert_array_equal(t[m], p[m])
    assert isinstance(threads[-1], InputError)
    assert isinstance(processes[-1], InputError)
    assert "image" in str(processes[-1])


def test_preprocessed_shapes_follow_the_settings(samples, tokenizer) -> None:
    settings = PreprocessSettings.from_data_settings(PREPROCESSING, ["audio", "image", "text"], tokenizer)
    out = run_pool(settings, "thread", samples[:1])[0]
    assert out["image"].shape == (1, 28, 28)
    assert out["audio"].shape[1] == 20
    assert out["audio"].shape[0] <= 101  # max_seconds 1.0 at hop 160
    assert out["text"].dtype == np.int64


def test_bad_pool_settings() -> None:
    with pytest.raises(ConfigError):
        PreprocessPool(PreprocessSettings(), workers=0)
    with pytest.raises(ConfigError):
        PreprocessPool(PreprocessSettings(), workers=1, mode="fork")


@pytest.mark.parametrize("features", ["mfcc", "logmel"])
def test_batched_features_equal_per_row_features(samples, tokenizer, features) -> None:
    """preprocess_batch (decode per row, one feature call over the zero-padded batch) gives
    every row what the per-row path gives it: clips of different lengths and rates, clips past
    max_seconds, rows without audio, a preprocessed array, and a bad row that fails alone."""
    settings = PreprocessSettings.from_data_settings(
        {**PREPROCESSING, "audio": {**PREPROCESSING["audio"], "features": features}},
        ["audio", "image", "text"], tokenizer)
    preprocessor = Preprocessor(settings)
    rows = [
        *samples,
        {"audio": wav_bytes(440, seconds=0.05)},  # a few frames: mostly padding in the batch
        {"audio": wav_bytes(523, seconds=1.7)},  # cut at max_seconds
        {"audio": wav_bytes(660, seconds=0.42, rate=8000), "text": "two"},  # resampled
        {"audio": np.zeros((7, 20), dtype=np.float32), "image": png_bytes(3)},  # preprocessed audio
        {"audio": b"RIFF....WAVEjunk", "text": "one"},  # fails alone
    ]
    batched = preprocessor.preprocess_batch(rows)
    assert isinstance(batched[-1], InputError)
    assert "audio" in str(batched[-1])
    assert sum("audio" in r for r in batched[:-1]) >= 10
    for row, got in zip(rows[:-1], batched[:-1], strict=True):
        want = preprocessor(row)
        assert sorted(got) == sorted(want)
        for m in want:
            assert got[m].shape == want[m].shape, m
            assert got[m].dtype == want[m].dtype, m
            np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-3, err_msg=m)
