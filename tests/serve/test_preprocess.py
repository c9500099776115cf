"""The preprocessing pool: raw files -> the same arrays in threads and in processes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mmfurnace.errors import ConfigError, InputError
from mmfurnace.serve.preprocess import PreprocessPool, PreprocessSettings

from .conftest import PREPROCESSING


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
