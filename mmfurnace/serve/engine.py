"""InferenceEngine: the asynchronous multimodal inference engine (no web server needed).

One request row (any subset of image / audio / text, raw or preprocessed) flows:

    preprocess (worker pool)
      -> encoder_<m> for each modality the row has, concurrently   (one batched stage each)
      -> fusion_head once the row's encoders are done               (batched)
      -> logits

(``mode="whole"`` replaces the encoder and fusion stages with one batched ``model`` stage.)
Each stage has its own :class:`~mmfurnace.serve.batcher.DynamicBatcher`, its own collate
thread and its own compute thread, and runs on the device/runtime its config names, so
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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError
from mmfurnace.export.spec import FULL_GRAPH, FUSION_GRAPH, encoder_graph
from mmfurnace.serve.admission import Admission
from mmfurnace.serve.batcher import BatchStats, DynamicBatcher, Timed
from mmfurnace.serve.config import EAGER, ServeConfig
from mmfurnace.serve.errors import NotReady
from mmfurnace.serve.loading import (
    build_export_stages,
    export_formats,
    find_tokenizer,
    on_device,
    resolve_config,
    stage_graphs,
    uses_workers,
    whole_workers,
)
from mmfurnace.serve.metrics import ServeMetrics
from mmfurnace.serve.preprocess import PreprocessPool, PreprocessSettings
from mmfurnace.serve.request_gate import Prediction, RequestGate, answer_many, build_signature
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
from mmfurnace.serve.workers import WholeBatchWorkers


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
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        if cfg.mode == "auto":
            cfg, found = resolve_config(cfg, modalities, None)
            reasons = {**found, **(reasons or {})}
        self.cfg = cfg
        self.reasons = dict(reasons or {})
        self.info = info
        self.modalities = sorted(modalities)
        self.sequences = {m: None in info.input_shapes[m] for m in self.modalities}
        want = [FULL_GRAPH] if cfg.mode == "whole" else [*(encoder_graph(m) for m in self.modalities), FUSION_GRAPH]
        if sorted(stages) != sorted(want):
            raise ConfigError(f"mode {cfg.mode!r} needs stages {want}, got {sorted(stages)}")
        self.stages = dict(stages)
        # The fast path: worker processes that decode, compute features and run the model per batch.
        self.workers: WholeBatchWorkers | None = next(
            (s for s in self.stages.values() if isinstance(s, WholeBatchWorkers)), None)
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
        self.admission = Admission.from_config(cfg.latency_budget_ms, cfg.max_batch_size, cfg.retry_after_s)
        self.gate = RequestGate(cfg, self.signature, self.metrics, self.admission)
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

        spec = load_spec(export_dir)
        cfg, reasons = resolve_config(cfg or ServeConfig(), spec.modalities, export_formats(spec))
        tokenizer = tokenizer if tokenizer is not None else find_tokenizer(spec.directory, spec.preprocessing)
        settings = PreprocessSettings.from_data_settings(spec.preprocessing, spec.modalities, tokenizer)
        if uses_workers(cfg):
            stages: dict[str, Any] = {FULL_GRAPH: whole_workers(spec, cfg, settings)}
            reasons["runner"] = ("worker processes: each decodes, computes features and runs the model "
                                 "for a whole batch (whole mode on the CPU, preprocess_mode process)")
        else:
            stages = build_export_stages(spec, cfg)
            reasons["runner"] = "preprocessing pool, then batched stages in this process"
        return cls(cfg=cfg, info=spec.info, modalities=spec.modalities, stages=stages, preprocess=settings,
                   keep_alive=keep_alive, reasons=reasons)

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
        runtime needs the exported graphs: the model is exported to a temporary directory."""
        cfg, reasons = resolve_config(cfg or ServeConfig(), model.modalities, None)
        model = copy.deepcopy(model).cpu().eval()
        graphs = stage_graphs(cfg, model.modalities)
        if any(s.runtime != EAGER for s in graphs.values()):
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
        reasons["runner"] = "preprocessing pool, then batched stages in this process"
        return cls(cfg=cfg, info=info, modalities=model.modalities, stages=stages, preprocess=settings,
                   reasons=reasons)

    def _warm_up(self) -> dict[str, EncoderShape]:
        """Run every stage once on a two-row example (loads kernels / builds sessions) and
        learn what each encoder emits, which the fusion batches need to fill absent rows."""
        rows = [{m: self._like[m] for m in self.modalities}, {self.modalities[0]: self._like[self.modalities[0]]}]
        if self.workers is not None:
            return {}  # each worker warms its own model up when it starts
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
        """Mode, modalities and, per stage, its runtime/device (what /v2/models reports; the stage's
        own description names it under its wire key "backend")."""
        return {
            "mode": self.cfg.mode,
            "runtime": {g: s.describe().get("backend") for g, s in self.stages.items()},
            "why": dict(self.reasons),
            "modalities": self.modalities,
            "preprocess": {"mode": self.cfg.preprocess_mode, "workers": self.cfg.preprocess_workers,
                           "where": "in the model's worker processes, batched" if self.workers else "pool",
                           "raw_modalities": self.pool.preprocessor.raw_modalities},
            "stages": {g: s.describe() for g, s in self.stages.items()},
            "admission": {"latency_budget_ms": self.cfg.latency_budget_ms,
                          "budget_now_ms": None if (b := self.admission.budget()) is None else round(b * 1000, 1),
                          "max_queue": self.cfg.max_queue,
                          "max_concurrency": self.cfg.max_concurrency},
        }

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker pool, the stage threads and the batchers on the running loop."""
        if self.ready:
            return
        if self.cfg.torch_threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.cfg.torch_threads)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.workers.start if self.workers else self.pool.start)
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
                max_inflight=self._inflight(graph),
                name=graph,
                retry_after_s=self.cfg.retry_after_s,
                on_batch=self._on_batch,
                pending=self._pending_fn(graph),
            )
            await batcher.start()
            self._batchers[graph] = batcher
            self.admission.add_stage(graph, self._inflight(graph), min_rows=max(2, self.cfg.max_batch_size // 8))
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
        await asyncio.get_running_loop().run_in_executor(None, self.workers.close if self.workers else self.pool.close)
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    async def __aenter__(self) -> InferenceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _pending_fn(self, graph: str) -> Any:
        """Rows admitted that may still reach ``graph``'s batcher: every row in flight that is
        not already in it (an upper bound in split mode, exact for one stage)."""

        def pending() -> int:
            b = self._batchers.get(graph)
            inside = 0 if b is None else b.depth + b.forming + b.running_rows
            return self.gate.inflight - inside

        return pending

    def _inflight(self, graph: str) -> int:
        return len(self.workers.workers) if self.workers is not None else self.cfg.max_inflight_batches

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(stats)
        self.admission.observe(stats.name, stats.size, stats.run_s, done_at=stats.done_at, waiting=stats.waiting)

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, row: Mapping[str, Any], *, deadline_s: float | None = None) -> Prediction:
        """Predict one row: modality -> raw input (image/audio file bytes, text str/bytes) or a
        preprocessed array/tensor. deadline_s: the caller's own deadline (shorter than
        request_timeout_s). Raises InputError, Overloaded, RequestTimeout, NotReady."""
        if not self.ready:
            raise NotReady("engine is not started (or is shutting down)")
        return await self.gate.answer(row, self._pipeline, deadline_s=deadline_s)

    async def infer_many(self, rows: Sequence[Mapping[str, Any]], *, deadline_s: float | None = None) -> list[Prediction]:
        """Predict several rows concurrently (they batch with each other and with other
        requests); admitted or shed together; the first failing row's error is raised after
        every row is answered."""
        if not self.ready:
            raise NotReady("engine is not started (or is shutting down)")
        self.gate.admit(len(rows), deadline_s)
        return await answer_many(
            lambda r: self.gate.answer(r, self._pipeline, deadline_s=deadline_s, admitted=True), rows)

    def admit(self, rows: int = 1, deadline_s: float | None = None) -> None:
        """Raise Overloaded (or NotReady) now if ``rows`` more rows would not be served in time:
        what the HTTP layer asks before it reads a request's body."""
        if not self.ready:
            raise NotReady("engine is not started (or is shutting down)")
        self.gate.admit(rows, deadline_s)

    async def _pipeline(self, row: dict[str, Any], timings: dict[str, float]) -> np.ndarray:
        if self.workers is not None:  # raw bytes straight to a worker, preprocessed there
            logits, worker_timings = await self._submit(FULL_GRAPH, row, timings)
            timings.update(worker_timings)
            return logits
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
        if self.workers is not None:
            return self.workers.run
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
