"""Parity: run every available runtime on one batch and compare its logits with eager FP32.

Tolerances (``ref`` = eager FP32 logits):
    fp32       max |logits - ref| <= 1e-4 * max(1, max |ref|)
    fp16/bf16  max |logits - ref| <= 1e-2 * max(1, max |ref|)
    int8       accuracy delta vs eager <= 1 point, on the batch's labels (or, with no labels,
               on eager's own predictions — then it is the top-1 disagreement rate)

Every runtime runs through the shared evaluation loop
(:func:`mmfurnace.models.predict.predictions`) and accuracy is
:func:`mmfurnace.models.predict.accuracy` (a share of rows; exact match for multi-label), so a
delta here means what it means in the compression report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.export.inputs import make_example_batch
from mmfurnace.export.runtimes import RUNTIMES
from mmfurnace.export.spec import load_spec
from mmfurnace.models.predict import accuracy, predictions

RELATIVE_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-2}
INT8_MAX_ACCURACY_DROP = 1.0  # percentage points


@dataclass(frozen=True)
class ParityResult:
    """One runtime x precision. status: "pass", "fail", "skip" (not available / unsupported)
    or "error" (it raised). metric: "max_abs_diff" or "accuracy_delta_pts"."""

    runtime: str
    precision: str
    status: str
    metric: str
    value: float | None
    tolerance: float | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    export_dir: str | Path,
    batch: Batch | Mapping[str, Any] | None = None,
    *,
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ParityResult]:
    """Compare every runtime in ``runtimes`` (default: all registered) x ``precisions`` with
    eager FP32 on ``batch`` (default: a synthetic batch with padding and absent rows).

    options: runtime name -> extra constructor options (e.g. {"openvino": {"hint": "LATENCY"}}).
    Backends that are not available here, or do not run a precision, are "skip" with the
    reason. Returns one ParityResult per pair, in a stable order.
    """
    spec = load_spec(export_dir)
    names = list(runtimes) if runtimes is not None else RUNTIMES.names()
    for name in names:
        RUNTIMES[name]  # unknown names: ConfigError listing the known ones
    batch = (
        batch
        if batch is not None
        else make_example_batch(spec.info, 8, seed=7, modalities=spec.modalities)
    )
    reference = _logits(RUNTIMES["eager"](export_dir), batch)
    labels = _labels(batch, reference, spec.info.multilabel)
    results = []
    for name in names:
        cls = RUNTIMES[name]
        ok, why = cls.available()
        for precision in precisions:
            if precision not in RELATIVE_TOLERANCE and precision != "int8":
                raise ConfigError(
                    f"precision {precision!r} is unknown; known: fp32, fp16, bf16, int8"
                )
            if not ok:
                results.append(
                    ParityResult(name, precision, "skip", _metric(precision), None, None, why)
                )
                continue
            if precision not in cls.supported_precisions():
                results.append(
                    ParityResult(
                        name,
                        precision,
                        "skip",
                        _metric(precision),
                        None,
                        None,
                        f"{name} does not run {precision} here",
                    )
                )
                continue
            results.append(
                _one(
                    export_dir,
                    name,
                    precision,
                    batch,
                    reference,
                    labels,
                    spec.info.multilabel,
                    options,
                )
            )
    return results


def _one(
    export_dir: str | Path,
    name: str,
    precision: str,
    batch: Batch | Mapping[str, Any],
    reference: np.ndarray,
    labels: np.ndarray,
    multilabel: bool,
    options: Mapping[str, Mapping[str, Any]] | None,
) -> ParityResult:
    metric = _metric(precision)
    try:
        runtime = RUNTIMES[name](
            export_dir, precision=precision, **dict((options or {}).get(name, {}))
        )
        logits = _logits(runtime, batch)
    except InputError:
        raise  # the export or the batch is wrong: that is the user's error, not a runtime's
    except Exception as err:  # a runtime failing is a result to report, whatever it raises
        return ParityResult(
            name, precision, "error", metric, None, None, f"{type(err).__name__}: {err}"[:500]
        )
    if logits.shape != reference.shape:
        return ParityResult(
            name,
            precision,
            "fail",
            metric,
            None,
            None,
            f"logits shape {logits.shape} != eager {reference.shape}",
        )
    if not np.isfinite(logits).all():
        return ParityResult(name, precision, "fail", metric, None, None, "logits hold NaN or inf")
    if precision == "int8":
        delta = 100 * (_accuracy(reference, labels, multilabel) - _accuracy(logits, labels, multilabel))
        status = "pass" if delta <= INT8_MAX_ACCURACY_DROP else "fail"
        return ParityResult(name, precision, status, metric, float(delta), INT8_MAX_ACCURACY_DROP)
    tolerance = RELATIVE_TOLERANCE[precision] * max(1.0, float(np.abs(reference).max()))
    diff = float(np.abs(logits.astype(np.float64) - reference).max())
    return ParityResult(
        name, precision, "pass" if diff <= tolerance else "fail", metric, diff, tolerance
    )


def _metric(precision: str) -> str:
    return "accuracy_delta_pts" if precision == "int8" else "max_abs_diff"


def _labels(
    batch: Batch | Mapping[str, Any], reference: np.ndarray, multilabel: bool
) -> np.ndarray:
    if isinstance(batch, Batch):
        return batch.labels.detach().cpu().numpy()
    if "labels" in batch:
        return np.asarray(batch["labels"])
    return (reference > 0).astype(np.float32) if multilabel else reference.argmax(1)


def _logits(runtime: Any, batch: Batch | Mapping[str, Any]) -> np.ndarray:
    """(batch, classes) float32 logits of ``runtime`` on the one batch."""
    return next(predictions(runtime.run, [batch], None)).logits.numpy()


def _accuracy(logits: np.ndarray, labels: np.ndarray, multilabel: bool) -> float:
    return accuracy(torch.from_numpy(logits), torch.from_numpy(np.asarray(labels)), multilabel=multilabel)


def format_parity(results: Sequence[ParityResult]) -> str:
    """A plain-text table of the results."""
    rows = [("runtime", "precision", "status", "metric", "value", "tolerance", "note")]
    for r in results:
        rows.append(
            (
                r.runtime,
                r.precision,
                r.status.upper(),
                r.metric,
                "-" if r.value is None else f"{r.value:.3g}",
                "-" if r.tolerance is None else f"{r.tolerance:.3g}",
                r.reason[:70],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    )


def parity_exit_code(results: Sequence[ParityResult]) -> int:
    """0 when every checked runtime passed (skips are fine), 1 otherwise (for ``--check``)."""
    return 0 if all(r.ok for r in results) else 1


def assert_parity(
    export_dir: str | Path, batch: Batch | Mapping[str, Any] | None = None, **kwargs: Any
) -> list[ParityResult]:
    """check_parity, raising InputError naming the export and each failing runtime."""
    results = check_parity(export_dir, batch, **kwargs)
    failed = [r for r in results if not r.ok]
    if failed:
        lines = ", ".join(
            f"{r.runtime}/{r.precision}: {r.status}"
            + (
                f" ({r.metric} {r.value:.3g} > {r.tolerance:.3g})"
                if r.value is not None and r.tolerance is not None
                else ""
            )
            + (f" {r.reason}" if r.reason else "")
            for r in failed
        )
        raise InputError(f"{export_dir}: parity check failed for {lines}")
    return results
