"""InferenceEngine: the asynchronous multimodal inference engine (no web server needed).

One request row (any subset of image / audio / text, raw or preprocessed) flows:

    preprocess (worker pool)
      -> encoder_<m> for each modality the row has, concurrently   (one batched stage each)
      -> fusion_head once the row's encoders are done               (batched)
      -> logits

(``mode="whole"`` replaces the encoder and fusion stages with one batched ``model`` stage.)
Each stage has its own :class:`~mmfurnace.serve.batcher.DynamicBatcher`, its own collate
thread and its own compute thread, and runs on the device/backend its config names, so
encoders of different modalities compute at the same time and a modality a row lacks never
reaches its encoder. Rows with different modality subsets share batches: an encoder batch
holds only rows that have its modality; the fusion batch holds absent modalities as zeros
with ``<m>_present`` False. Two batches per stage may be in flight: the next one is collated
(and, on a GPU, copied on a side CUDA stream) while the current one computes; preprocessing
of later requests runs in its pool meanwhile.

Every row is timed per stage (preprocess, queue_<stage>, <stage>, total) into the engine's
Prometheus histograms (``engine.metrics``, its own registry).

    async with InferenceEngine.from_export("exports/digits", ServeConfig()) as engine:
        prediction = await engine.infer({"image": png_bytes, "text": "seven"})
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.export.spec import FULL_GRAPH, FUSION_GRAPH, encoder_graph
from mmfurnace.serve.batcher import BatchStats, DynamicBatcher, Timed
from mmfurnace.serve.config import EAGER, ServeConfig
from mmfurnace.serve.errors import NotReady, Overloaded, RequestTimeout
from mmfurnace.serve.loading import build_export_stages, find_tokenizer, on_device, stage_graphs
from mmfurnace.serve.metrics import ServeMetrics
from mmfurnace.serve.preprocess import Preprocessor, PreprocessPool, PreprocessSettings
from mmfurnace.serve.signature import ModelSignature, labels, probabilities, validate_row
from mmfurnace.serve.stages import (
    EncoderShape,
    GraphBatch,
    TorchStage,
    collate_features,
    collate_modality,
    collate_whole,
    example_row,
    split_encoded,
)

Pipeline = Callable[[dict[str, Any], dict[str, float]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class Prediction:
    """One row's answer: logits and probabilities (classes,), the label, stage timings (s)."""

    logits: np.ndarray
    probabilities: np.ndarray
    label: str
    timings: dict[str, float]


class InferenceEngine:
    """Build with :meth:`from_export`, :meth:`from_checkpoint` or :meth:`from_model`; then
    ``await start()`` (or ``async with``) on the event loop that will call :meth:`infer`."""

    def __init__(
        self,
        *,
        cfg: ServeConfig,
        info: DatasetInfo,
        modalities: Sequence[str],
        stages: Mapping[str, Any],
        preprocess: PreprocessSettings,
        keep_alive: Any = None,
    ) -> None:
        self.cfg = cfg
        self.info = info
        self.modalities = sorted(modalities)
        self.sequences = {m: None in info.input_shapes[m] for m in self.modalities}
        want = [FULL_GRAPH] if cfg.mode == "whole" else [*(encoder_graph(m) for m in self.modalities), FUSION_GRAPH]
        if sorted(stages) != sorted(want):
            raise ConfigError(f"mode {cfg.mode!r} needs stages {want}, got {sorted(stages)}")
        self.stages = dict(stages)
        self.pool = PreprocessPool(preprocess, workers=cfg.preprocess_workers, mode=cfg.preprocess_mode)
        self.pool.preprocessor.check_against(info, self.modalities)
        self.metrics = ServeMetrics()
        self.signature = build_signature(cfg, info, self.modalities, self.pool.preprocessor)
        self._like = {
            m: example_row(m, info.input_shapes[m], info.input_dtypes.get(m, "float32")) for m in self.modalities
        }
        self._shapes = self._warm_up()
        self._keep_alive = keep_alive  # e.g. the temporary export a from_model engine runs
        self._batchers: dict[str, DynamicBatcher] = {}
        self._threads: dict[str, tuple[ThreadPoolExecutor, ThreadPoolExecutor]] = {}
        self.gate = RequestGate(cfg, self.signature, self.metrics)
        self._saved_threads: int | None = None
        self.ready = False

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_export(
        cls, export_dir: str | Path, cfg: ServeConfig | None = None, *, tokenizer: Any | None = None,
        keep_alive: Any = None,
    ) -> InferenceEngine:
        """Serve an export directory (``mmfurnace.export.export_model``). Raw text needs the
        tokenizer: ``tokenizer`` if given, else ``tokenizer.json`` in the export, else the
        file named by its preprocessing ``text.tokenizer``; without one, text must come as ids."""
        from mmfurnace.export.spec import load_spec

        cfg = cfg or ServeConfig()
        spec = load_spec(export_dir)
        tokenizer = tokenizer if tokenizer is not None else find_tokenizer(spec.directory, spec.preprocessing)
        settings = PreprocessSettings.from_data_settings(spec.preprocessing, spec.modalities, tokenizer)
        stages = build_export_stages(spec, cfg)
        return cls(cfg=cfg, info=spec.info, modalities=spec.modalities, stages=stages, preprocess=settings,
                   keep_alive=keep_alive)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, cfg: ServeConfig | None = None, *, tokenizer: Any | None = None) -> InferenceEngine:
        """Serve a training checkpoint (``mmfurnace.train.checkpoint``) with its run's data settings."""
        from mmfurnace.train.checkpoint import load_model

        model, meta = load_model(checkpoint_dir)
        data = meta.config.data
        if tokenizer is None:
            tokenizer = find_tokenizer(Path(checkpoint_dir), {"text": {"tokenizer": data.text.tokenizer}}, data.root)
        return cls.from_model(
            model, meta.info, cfg, data=data.model_dump(mode="json"), tokenizer=tokenizer, model_config=meta.config.model
        )

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        info: DatasetInfo,
        cfg: ServeConfig | None = None,
        *,
        data: Mapping[str, Any] | None = None,
        tokenizer: Any | None = None,
        model_config: Any | None = None,
    ) -> InferenceEngine:
        """Serve an in-memory MultimodalClassifier. data: the data-config dict whose image /
        audio / text sections set preprocessing (None: defaults). A stage on a non-eager
        backend needs the exported graphs: the model is exported to a temporary directory."""
        cfg = cfg or ServeConfig()
        model = copy.deepcopy(model).cpu().eval()
        graphs = stage_graphs(cfg, model.modalities)
        if any(s.backend != EAGER for s in graphs.values()):
            from mmfurnace.export import export_model

            tmp = tempfile.TemporaryDirectory(prefix="mmfurnace-serve-")
            out = export_model(model, info, Path(tmp.name) / "export", preprocessing=dict(data or {}),
                               config=model_config, verify=False)
            return cls.from_export(out, cfg, tokenizer=tokenizer, keep_alive=tmp)
        models = {"cpu": on_device(model, "cpu")}
        stages = {}
        for graph, stage in graphs.items():
            if stage.device not in models:
                models[stage.device] = on_device(model, stage.device)
            stages[graph] = TorchStage(models[stage.device], graph, device=stage.device)
        settings = PreprocessSettings.from_data_settings(data, model.modalities, tokenizer)
        return cls(cfg=cfg, info=info, modalities=model.modalities, stages=stages, preprocess=settings)

    def _warm_up(self) -> dict[str, EncoderShape]:
        """Run every stage once on a two-row example (loads kernels / builds sessions) and
        learn what each encoder emits, which the fusion batches need to fill absent rows."""
        rows = [{m: self._like[m] for m in self.modalities}, {self.modalities[0]: self._like[self.modalities[0]]}]
        if self.cfg.mode == "whole":
            self._run_stage(FULL_GRAPH, collate_whole(rows, self.modalities, self._sequence_set, self._like))
            return {}
        shapes, encoded = {}, [{}, {}]
        for m in self.modalities:
            out = self._run_stage(encoder_graph(m), collate_modality(m, [self._like[m]] * 2, self.sequences[m]))
            seq, pooled = out[f"{m}_sequence"], out[f"{m}_pooled"]
            has_mask = f"{m}_sequence_mask" in out
            shapes[m] = EncoderShape(None if has_mask else int(seq.shape[1]), int(seq.shape[2]), int(pooled.shape[1]), has_mask)
            for row, enc in zip(encoded, split_encoded(m, out, has_mask), strict=True):
                row[m] = enc
        encoded[1] = {self.modalities[0]: encoded[1][self.modalities[0]]}
        logits = self._run_stage(FUSION_GRAPH, collate_features(encoded, shapes))["logits"]
        assert logits.shape == (2, self.info.num_classes), logits.shape
        return shapes

    @property
    def _sequence_set(self) -> set[str]:
        return {m for m, s in self.sequences.items() if s}

    def _run_stage(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stage = self.stages[graph]
        return stage.compute(stage.prepare(feed))

    def describe(self) -> dict[str, Any]:
        """Mode, modalities and, per stage, its backend/device (what /v2/models reports)."""
        return {
            "mode": self.cfg.mode,
            "modalities": self.modalities,
            "preprocess": {"mode": self.cfg.preprocess_mode, "workers": self.cfg.preprocess_workers,
                           "raw_modalities": self.pool.preprocessor.raw_modalities},
            "stages": {g: s.describe() for g, s in self.stages.items()},
        }

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker pool, the stage threads and the batchers on the running loop."""
        if self.ready:
            return
        if self.cfg.torch_threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.cfg.torch_threads)
        await asyncio.get_running_loop().run_in_executor(None, self.pool.start)
        for graph in self.stages:
            self._threads[graph] = (
                ThreadPoolExecutor(1, thread_name_prefix=f"mmf-collate-{graph}"),
                ThreadPoolExecutor(1, thread_name_prefix=f"mmf-compute-{graph}"),
            )
            batcher = DynamicBatcher(
                self._batch_fn(graph),
                max_batch_size=self.cfg.max_batch_size,
                max_wait_ms=self.cfg.max_wait_ms,
                max_queue=self.cfg.max_queue,
                max_inflight=self.cfg.max_inflight_batches,
                name=graph,
                retry_after_s=self.cfg.retry_after_s,
                on_batch=self._on_batch,
            )
            await batcher.start()
            self._batchers[graph] = batcher
            self.metrics.queue_depth.labels(graph).set_function(lambda b=batcher: b.depth)
        self.ready = True

    async def stop(self) -> None:
        """Answer what is queued (NotReady), finish running batches, release threads/workers."""
        self.ready = False
        for batcher in self._batchers.values():
            await batcher.stop()
        self._batchers.clear()
        for collate, compute in self._threads.values():
            collate.shutdown(wait=True)
            compute.shutdown(wait=True)
        self._threads.clear()
        await asyncio.get_running_loop().run_in_executor(None, self.pool.close)
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    async def __aenter__(self) -> InferenceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(stats)

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, row: Mapping[str, Any]) -> Prediction:
        """Predict one row: modality -> raw input (image/audio file bytes, text str/bytes) or a
        preprocessed array/tensor. Raises InputError, Overloaded, RequestTimeout, NotReady."""
        if not self.ready:
            raise NotReady("engine is not started (or is shutting down)")
        return await self.gate.answer(row, self._pipeline)

    async def infer_many(self, rows: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Predict several rows concurrently (they batch with each other and with other
        requests); the first failing row's error is raised after every row is answered."""
        return await answer_many(self.infer, rows)

    async def _pipeline(self, row: dict[str, Any], timings: dict[str, float]) -> np.ndarray:
        t0 = time.perf_counter()
        arrays = await self.pool.run(row)
        timings["preprocess"] = time.perf_counter() - t0
        if self.cfg.mode == "whole":
            return await self._submit(FULL_GRAPH, arrays, timings)
        present = sorted(arrays)
        futures: list[asyncio.Future] = []
        try:  # every encoder of this row at once: one future each, no task per encoder
            for m in present:
                futures.append(self._batchers[encoder_graph(m)].enqueue(arrays[m]))
            done = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:  # withdraw what was queued (overload, timeout)
                f.cancel()
            raise
        encoded = {m: self._record(encoder_graph(m), t, timings) for m, t in zip(present, done, strict=True)}
        return await self._submit(FUSION_GRAPH, encoded, timings)

    async def _submit(self, graph: str, payload: Any, timings: dict[str, float]) -> Any:
        return self._record(graph, await self._batchers[graph].submit_timed(payload), timings)

    @staticmethod
    def _record(graph: str, timed: Timed, timings: dict[str, float]) -> Any:
        stage = "model" if graph == FULL_GRAPH else "fusion" if graph == FUSION_GRAPH else graph
        timings[f"queue_{stage}"] = timed.queued_s
        timings[stage] = timed.run_s
        return timed.value

    def _batch_fn(self, graph: str) -> Any:
        batch = GraphBatch(self.stages[graph], graph, modalities=self.modalities, sequences=self._sequence_set,
                           like=self._like, shapes=self._shapes)
        collate_pool, compute_pool = self._threads[graph]

        async def run(rows: list[Any]) -> list[Any]:
            # Two threads per stage: with two batches in flight, the next one collates
            # (and starts its device copy) while this one computes.
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(collate_pool, batch.collate, rows)
            return await loop.run_in_executor(compute_pool, batch.compute, prepared)

        return run


def build_signature(cfg: ServeConfig, info: DatasetInfo, modalities: Sequence[str], preprocessor: Preprocessor) -> ModelSignature:
    """The contract the protocol checks requests against (shapes, dtypes, vocab, lengths)."""
    modalities = sorted(modalities)
    max_steps = {m: preprocessor.max_steps(m) or 4096 for m in modalities if None in info.input_shapes[m]}
    return ModelSignature(
        name=cfg.model_name,
        modalities=tuple(modalities),
        class_names=tuple(info.class_names),
        multilabel=info.multilabel,
        input_shapes={m: tuple(info.input_shapes[m]) for m in modalities},
        input_dtypes={m: info.input_dtypes.get(m, "float32") for m in modalities},
        vocab_size=info.vocab_size,
        max_steps=max_steps,
    )


class RequestGate:
    """What every row goes through, whoever computes it (this engine, or Ray deployments):
    admission against ``max_concurrency`` (Overloaded beyond), input validation, the
    ``request_timeout_s`` deadline (RequestTimeout), outcome counts and stage timings."""

    def __init__(self, cfg: ServeConfig, signature: ModelSignature, metrics: ServeMetrics) -> None:
        self.cfg = cfg
        self.signature = signature
        self.metrics = metrics
        self.inflight = 0

    async def answer(self, row: Mapping[str, Any], pipeline: Pipeline) -> Prediction:
        cfg, metrics = self.cfg, self.metrics
        if self.inflight >= cfg.max_concurrency:
            metrics.outcomes.labels("overloaded").inc()
            raise Overloaded(
                f"{self.inflight} rows in flight reach max_concurrency ({cfg.max_concurrency}); retry later",
                retry_after_s=cfg.retry_after_s,
            )
        self.inflight += 1
        metrics.inflight.inc()
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            checked = validate_row(row, self.signature)
            try:
                async with asyncio.timeout(cfg.request_timeout_s):
                    logits = await pipeline(checked, timings)
            except TimeoutError:
                raise RequestTimeout(
                    f"request did not finish within request_timeout_s={cfg.request_timeout_s:g} s"
                ) from None
        except BaseException as exc:
            metrics.outcomes.labels(_outcome(exc)).inc()
            raise
        finally:
            self.inflight -= 1
            metrics.inflight.dec()
        timings["total"] = time.perf_counter() - started
        metrics.outcomes.labels("ok").inc()
        metrics.observe_timings(timings)
        sig = self.signature
        probs = probabilities(np.asarray(logits)[None], sig.multilabel)[0]
        return Prediction(np.asarray(logits), probs, labels(probs[None], sig.class_names, sig.multilabel)[0], timings)


async def answer_many(infer: Callable[[Mapping[str, Any]], Awaitable[Prediction]], rows: Sequence[Mapping[str, Any]]) -> list[Prediction]:
    """``infer`` every row concurrently; raise the first row's error once all are answered."""
    results = await asyncio.gather(*(infer(r) for r in rows), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return list(results)  # type: ignore[arg-type]


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return "bad_input"
    if isinstance(exc, Overloaded | NotReady):
        return "overloaded"
    if isinstance(exc, RequestTimeout):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"
