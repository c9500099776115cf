"""InferenceEngine without HTTP: results equal the eager model's logits, modality subsets
batch together, concurrent requests are batched, timeouts and overload are answered."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from mmfurnace.data.batch import Sample, collate_samples
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.errors import Overloaded, RequestTimeout
from mmfurnace.serve.preprocess import Preprocessor, PreprocessSettings

from .conftest import PREPROCESSING


def preprocessed_rows(info, n: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Model-ready rows with ragged lengths and every modality subset represented."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        row = {
            "image": torch.randn(1, 28, 28, generator=g),
            "audio": torch.randn(4 + 3 * i, 20, generator=g),
            "text": torch.randint(1, info.vocab_size, (2 + i % 5,), generator=g),
        }
        for k, m in enumerate(("audio", "image", "text")):
            if i % 4 == k + 1:
                del row[m]
        rows.append(row)
    return rows


def eager_logits(model, info, rows) -> torch.Tensor:
    batch = collate_samples([Sample(r, torch.tensor(0)) for r in rows], info.modalities)
    with torch.no_grad():
        return model(batch.inputs, batch.present, batch.valid).logits


async def infer_all(engine, rows):
    async with engine:
        predictions = await engine.infer_many([{m: v.numpy() for m, v in r.items()} for r in rows])
        return torch.from_numpy(np.stack([p.logits for p in predictions])), engine


ORT_SPLIT = {"stages": {m: {"runtime": "onnxruntime"} for m in ("audio", "image", "text")},
             "fusion": {"runtime": "onnxruntime"}}


@pytest.mark.parametrize(
    "settings",
    [{}, {"mode": "whole"}, ORT_SPLIT, {"mode": "whole", "whole": {"runtime": "onnxruntime"}},
     {"stages": {"image": {"runtime": "onnxruntime"}}}],
    ids=["eager-split", "eager-whole", "ort-split", "ort-whole", "mixed-runtimes"],
)
def test_engine_matches_eager_model(export_dir, model, info, settings) -> None:
    rows = preprocessed_rows(info)
    engine = InferenceEngine.from_export(export_dir, ServeConfig(max_wait_ms=20, intra_op_threads=1, **settings))
    got, _ = asyncio.run(infer_all(engine, rows))
    torch.testing.assert_close(got, eager_logits(model, info, rows), rtol=1e-4, atol=1e-4)


def test_mixed_modality_subsets_share_batches(model, info) -> None:
    rows = preprocessed_rows(info, n=16)
    cfg = ServeConfig(mode="split", max_batch_size=64, max_wait_ms=200)
    got, engine = asyncio.run(infer_all(InferenceEngine.from_model(model, info, cfg), rows))
    torch.testing.assert_close(got, eager_logits(model, info, rows), rtol=1e-4, atol=1e-4)
    m = engine.metrics
    # One fusion batch of all 16 rows, though they came with 7 different modality subsets.
    assert m.batch_summary("fusion_head") == {"batches": 1.0, "rows": 16.0, "mean": 16.0, "max_bucket": 16.0}
    # An encoder only ever saw the rows that have its modality.
    for modality in ("audio", "image", "text"):
        have = sum(modality in r for r in rows)
        assert m.batch_summary(f"encoder_{modality}")["rows"] == have < 16


def test_concurrent_requests_are_batched(export_dir, samples, tokenizer) -> None:
    cfg = ServeConfig(mode="split", max_batch_size=8, max_wait_ms=50, preprocess_workers=2)
    engine = InferenceEngine.from_export(export_dir, cfg)

    async def main():
        async with engine:
            return await asyncio.gather(*(engine.infer(s) for s in samples * 2))

    predictions = asyncio.run(main())
    assert len(predictions) == 2 * len(samples)
    fusion = engine.metrics.batch_summary("fusion_head")
    assert fusion["rows"] == 20
    assert fusion["batches"] < 20
    assert fusion["mean"] > 1
    assert engine.metrics.value("mmfurnace_inference_total", outcome="ok") == 20
    for p in predictions:
        assert p.label in engine.signature.class_names
        assert abs(float(p.probabilities.sum()) - 1.0) < 1e-5
        assert {"preprocess", "queue_fusion", "fusion", "total"} <= set(p.timings)
    assert engine.metrics.value("mmfurnace_stage_seconds_count", stage="encoder_audio") == sum("audio" in s for s in samples) * 2


def test_raw_inputs_equal_their_preprocessed_form(export_dir, samples, tokenizer) -> None:
    engine = InferenceEngine.from_export(export_dir, ServeConfig(mode="whole"))
    pre = Preprocessor(PreprocessSettings.from_data_settings(PREPROCESSING, ["audio", "image", "text"], tokenizer))

    async def main():
        async with engine:
            raw = await engine.infer_many(samples)
            arrays = await engine.infer_many([pre(s) for s in samples])
            return raw, arrays

    raw, arrays = asyncio.run(main())
    np.testing.assert_allclose(np.stack([p.logits for p in raw]), np.stack([p.logits for p in arrays]), rtol=1e-5, atol=1e-5)


class SlowStage:
    """Wraps a stage and sleeps in compute, so a deadline passes deterministically."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def describe(self):
        return self.inner.describe()

    def prepare(self, feed):
        return self.inner.prepare(feed)

    def compute(self, prepared):
        time.sleep(self.seconds)
        return self.inner.compute(prepared)


def slow_engine(model, info, cfg, seconds):
    engine = InferenceEngine.from_model(model, info, cfg)
    engine.stages["fusion_head"] = SlowStage(engine.stages["fusion_head"], seconds)
    return engine


def test_request_timeout_is_raised_and_counted(model, info) -> None:
    engine = slow_engine(model, info, ServeConfig(mode="split", request_timeout_s=0.2), seconds=1.0)
    row = {m: v.numpy() for m, v in preprocessed_rows(info, 1)[0].items()}

    async def main():
        async with engine:
            with pytest.raises(RequestTimeout, match="request_timeout_s"):
                await engine.infer(row)

    asyncio.run(main())
    assert engine.metrics.value("mmfurnace_inference_total", outcome="timeout") == 1


def test_overload_sheds_with_overloaded_and_answers_everyone(model, info) -> None:
    cfg = ServeConfig(mode="split", max_batch_size=2, max_queue=2, max_inflight_batches=1, max_concurrency=6,
                      max_wait_ms=0, request_timeout_s=20)
    engine = slow_engine(model, info, cfg, seconds=0.3)
    row = {m: v.numpy() for m, v in preprocessed_rows(info, 1)[0].items()}

    async def main():
        async with engine:
            results = await asyncio.gather(*(engine.infer(row) for _ in range(30)), return_exceptions=True)
            after = await engine.infer(row)  # still serving
            return results, after

    results, after = asyncio.run(main())
    ok = [r for r in results if not isinstance(r, BaseException)]
    shed = [r for r in results if isinstance(r, Overloaded)]
    assert len(ok) + len(shed) == 30
    assert ok
    assert shed
    assert after.label in info.class_names


def test_bad_rows_are_input_errors(model, info) -> None:
    engine = InferenceEngine.from_model(model, info, ServeConfig())
    bad = [
        {},
        {"video": np.zeros(3)},
        {"image": np.full((1, 28, 28), np.nan, dtype=np.float32)},
        {"image": np.zeros((3, 28, 28), dtype=np.float32)},
        {"text": np.array([1, 999])},
        {"image": b"not a png"},
        {"audio": b"RIFF....not audio"},
        {"text": b"\xff\xfe\xfa"},
        {"text": "   "},
    ]

    async def main():
        async with engine:
            for row in bad:
                with pytest.raises(InputError):
                    await engine.infer(row)
            await engine.infer({"text": "one two"})  # no tokenizer given: text must be ids

    with pytest.raises(InputError, match="cannot preprocess raw text"):
        asyncio.run(main())


def test_bad_engine_settings_fail_at_construction(export_dir, model, info) -> None:
    from mmfurnace.export import export_model

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            ServeConfig(stages={"image": {"device": "cuda:0"}})
    with pytest.raises(ValueError, match="runs on a CUDA GPU"):
        ServeConfig(fusion={"runtime": "onnxruntime-cuda", "device": "cpu"})
    with pytest.raises(ValueError, match="unknown runtime 'onnx'; known: .*onnxruntime"):
        ServeConfig(whole={"runtime": "onnx"})
    whole_only = export_model(model, info, export_dir.parent / "whole_only", formats=("onnx",), split=False, verify=False)
    with pytest.raises(ConfigError, match="re-export with split=True or serve with mode: whole"):
        InferenceEngine.from_export(whole_only, ServeConfig(mode="split"))


def test_from_checkpoint_serves_raw_inputs_like_the_trained_model(tmp_path, model, info, model_config, tokenizer, samples) -> None:
    from mmfurnace.config import RunConfig
    from mmfurnace.train.checkpoint import save_checkpoint

    data_root = tmp_path / "data"
    data_root.mkdir()
    tokenizer.save(str(data_root / "tokenizer.json"))  # the tokenizer beside the dataset
    run = RunConfig.model_validate({
        "data": {"root": str(data_root), **{k: PREPROCESSING[k] for k in ("image", "audio", "text")}},
        "model": model_config.model_dump(mode="json"),
    })
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=None, scheduler=None, scaler=None, epoch=1,
                           step=1, rng_states=None, config=run.model_dump(mode="json"), info=info, metrics={})
    served = InferenceEngine.from_checkpoint(ckpt, ServeConfig(mode="whole"))
    reference = InferenceEngine.from_model(model, info, ServeConfig(mode="whole"), data=PREPROCESSING, tokenizer=tokenizer)

    async def main(engine):
        async with engine:
            return np.stack([p.logits for p in await engine.infer_many(samples)])

    np.testing.assert_allclose(asyncio.run(main(served)), asyncio.run(main(reference)), rtol=1e-5, atol=1e-5)


class BarrierStage(SlowStage):
    """Computes only once every stage sharing ``barrier`` is computing at the same moment."""

    def __init__(self, inner, barrier) -> None:
        super().__init__(inner, 0.0)
        self.barrier = barrier

    def compute(self, prepared):
        self.barrier.wait()  # BrokenBarrierError (after its timeout) if the others never come
        return self.inner.compute(prepared)


def test_encoders_of_one_request_compute_concurrently(model, info) -> None:
    import threading

    barrier = threading.Barrier(3, timeout=20)
    engine = InferenceEngine.from_model(model, info, ServeConfig(mode="split"))
    for m in ("audio", "image", "text"):
        engine.stages[f"encoder_{m}"] = BarrierStage(engine.stages[f"encoder_{m}"], barrier)
    row = {m: v.numpy() for m, v in preprocessed_rows(info, 1)[0].items()}
    assert sorted(row) == ["audio", "image", "text"]

    async def main():
        async with engine:
            return await engine.infer(row)

    assert asyncio.run(main()).label in info.class_names  # all three met at the barrier


class OverlapStage(SlowStage):
    """The first batch's compute waits until the next batch is being prepared."""

    def __init__(self, inner) -> None:
        super().__init__(inner, 0.0)
        import threading

        self.prepared, self.second = 0, threading.Event()

    def prepare(self, feed):
        self.prepared += 1
        if self.prepared == 2:
            self.second.set()
        return self.inner.prepare(feed)

    def compute(self, prepared):
        assert self.second.wait(timeout=20), "the next batch was not prepared during this compute"
        return self.inner.compute(prepared)


def test_next_batch_is_prepared_while_the_current_one_computes(model, info) -> None:
    cfg = ServeConfig(mode="whole", whole={"runtime": "eager"}, max_batch_size=1, max_wait_ms=0, max_inflight_batches=2)
    engine = InferenceEngine.from_model(model, info, cfg)
    stage = engine.stages["model"] = OverlapStage(engine.stages["model"])
    rows = [{m: v.numpy() for m, v in r.items()} for r in preprocessed_rows(info, 2)]

    async def main():
        async with engine:
            return await engine.infer_many(rows)

    assert len(asyncio.run(main())) == 2
    assert stage.prepared == 2
