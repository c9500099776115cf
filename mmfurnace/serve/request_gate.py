"""What every request row goes through, whoever computes it (the engine, or Ray deployments):
admission, validation against the model's signature, the deadline, outcome counts and stage
timings, and the :class:`Prediction` it ends in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.serve.admission import Admission
from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.errors import NON_FINITE, NonFiniteOutput, NotReady, Overloaded, RequestTimeout
from mmfurnace.serve.metrics import ServeMetrics
from mmfurnace.serve.preprocess import Preprocessor
from mmfurnace.serve.signature import ModelSignature, labels, probabilities, validate_row

Pipeline = Callable[[dict[str, Any], dict[str, float]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class Prediction:
    """One row's answer: logits and probabilities (classes,), the label, stage timings (s)."""

    logits: np.ndarray
    probabilities: np.ndarray
    label: str
    timings: dict[str, float]


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
    admission (``max_concurrency`` rows in flight, and the latency budget of
    :mod:`mmfurnace.serve.admission`; Overloaded beyond), input validation, the deadline
    (``request_timeout_s`` or the caller's shorter one; RequestTimeout), outcome counts and
    stage timings."""

    def __init__(self, cfg: ServeConfig, signature: ModelSignature, metrics: ServeMetrics,
                 admission: Admission | None = None) -> None:
        self.cfg = cfg
        self.signature = signature
        self.metrics = metrics
        self.admission = admission or Admission(None)
        self.inflight = 0

    def admit(self, rows: int, deadline_s: float | None = None) -> None:
        """Raise Overloaded when ``rows`` more rows exceed max_concurrency or would wait past
        the latency budget / ``deadline_s`` (counted as overloaded)."""
        cfg = self.cfg
        try:
            if self.inflight + rows > cfg.max_concurrency:
                raise Overloaded(
                    f"{self.inflight} rows in flight (+{rows}) exceed max_concurrency ({cfg.max_concurrency}); retry later",
                    retry_after_s=cfg.retry_after_s,
                )
            self.admission.check(self.inflight, deadline_s)
        except Overloaded:
            self.metrics.outcomes.labels("overloaded").inc(rows)
            raise

    async def answer(self, row: Mapping[str, Any], pipeline: Pipeline, *, deadline_s: float | None = None,
                     admitted: bool = False) -> Prediction:
        cfg, metrics = self.cfg, self.metrics
        if not admitted:
            self.admit(1, deadline_s)
        self.inflight += 1
        metrics.inflight.inc()
        started = time.perf_counter()
        timings: dict[str, float] = {}
        timeout = cfg.request_timeout_s if deadline_s is None else min(deadline_s, cfg.request_timeout_s)
        try:
            checked = validate_row(row, self.signature)
            try:
                async with asyncio.timeout(timeout):
                    logits = np.asarray(await pipeline(checked, timings))
            except TimeoutError:
                which = "request_timeout_s" if timeout == cfg.request_timeout_s else "the request's deadline"
                raise RequestTimeout(f"request did not finish within {which}={timeout:g} s") from None
            if not np.isfinite(logits).all():  # never a bare NaN in a JSON answer
                raise NonFiniteOutput(NON_FINITE)
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
        probs = probabilities(logits[None], sig.multilabel)[0]
        return Prediction(logits, probs, labels(probs[None], sig.class_names, sig.multilabel)[0], timings)


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
