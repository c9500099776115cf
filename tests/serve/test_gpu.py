"""GPU stages (skipped without CUDA): encoders on cuda, copies on a side stream, same logits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine

from .test_engine import eager_logits, preprocessed_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_heavy_modalities_on_gpu_light_on_cpu_match_cpu(model, info) -> None:
    cfg = ServeConfig(stages={"image": {"device": "cuda:0"}, "audio": {"device": "cuda:0"}},
                      fusion={"device": "cuda:0"}, max_wait_ms=20)
    engine = InferenceEngine.from_model(model, info, cfg)
    assert engine.stages["encoder_image"].copy_stream is not None
    assert engine.stages["encoder_text"].device.type == "cpu"
    rows = preprocessed_rows(info)

    async def main():
        async with engine:
            return await engine.infer_many([{m: v.numpy() for m, v in r.items()} for r in rows])

    got = torch.from_numpy(np.stack([p.logits for p in asyncio.run(main())]))
    torch.testing.assert_close(got, eager_logits(model, info, rows), rtol=1e-3, atol=1e-3)
