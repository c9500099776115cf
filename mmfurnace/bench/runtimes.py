"""Benchmark the inference runtimes of one export against each other, in one run.

bench_runtimes() loads every available runtime x precision, warms each up on every batch size,
then times them *interleaved*: each round runs every configuration on every batch size for a
few iterations, so slow drift of the machine (thermal state, neighbours on a shared host)
spreads over all runtimes instead of penalising whichever ran last. Reported per
configuration: latency p50/p95/p99 (ms) at the latency batch size (1) and throughput
(samples/s, batch size / median call time) at every batch size. Each timed call is
``runtime.run(feed)`` on a pre-built numpy feed: input validation + the runtime + the copy of
the logits back, i.e. what a caller pays.
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfurnace.bench.machine import machine_info
from mmfurnace.bench.regression import reference_workload
from mmfurnace.bench.runtime_report import flat_metrics
from mmfurnace.bench.timing import percentiles, time_interleaved
from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError
from mmfurnace.export.inputs import flatten_batch
from mmfurnace.export.runtimes import RUNTIMES
from mmfurnace.export.spec import FULL_GRAPH, load_spec


def bench_runtimes(
    export_dir: str | Path,
    batches_by_size: Mapping[int, Batch],
    *,
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    warmup: int = 3,
    iters: int = 20,
    rounds: int = 5,
    threads: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    latency_batch: int = 1,
    reference: bool = True,
) -> dict[str, Any]:
    """Time every available runtime x precision on every batch in ``batches_by_size``.

    iters: timed calls per configuration and batch size, spread over ``rounds`` interleaved
    rounds (``iters // rounds`` each, at least one). threads: intra-op threads for every
    runtime (None: each runtime's default). options: runtime -> extra constructor options.
    reference: also time the fixed reference workload of :mod:`mmfurnace.bench.regression`.
    Returns a JSON-serializable dict: "machine", "export", "settings", "results" (one entry
    per configuration), "skipped", and "metrics" / "reference" in the shape
    ``python -m mmfurnace.bench.regression`` compares against a baseline.
    """
    if not batches_by_size:
        raise ConfigError("bench_runtimes needs at least one batch size")
    if iters < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(
            f"need iters >= 1, rounds >= 1, warmup >= 0 (got {iters}, {rounds}, {warmup})"
        )
    spec = load_spec(export_dir)
    names = list(runtimes) if runtimes is not None else RUNTIMES.names()
    sizes = sorted(batches_by_size)
    feeds = {b: {k: _numpy(v) for k, v in flatten_batch(batches_by_size[b]).items()} for b in sizes}
    for b, feed in feeds.items():
        got = len(next(iter(feed.values())))
        if got != b:
            raise ConfigError(f"batches_by_size[{b}] holds a batch of {got}")

    loaded, skipped = _load(export_dir, names, precisions, threads, options)
    for (name, precision), entry in list(loaded.items()):
        try:
            for b in sizes:
                for _ in range(warmup + (1 if name == "compile" else 0)):
                    entry["runtime"].run(feeds[b])
            settle = getattr(entry["runtime"], "wait_for_static", None)
            if settle is not None and settle():  # OpenVINO: time its static-shape copies
                for b in sizes:
                    entry["runtime"].run(feeds[b])
        except Exception as err:  # a runtime that cannot run is reported, not fatal
            skipped.append(
                {
                    "backend": name,
                    "precision": precision,
                    "reason": f"{type(err).__name__}: {err}"[:300],
                }
            )
            del loaded[(name, precision)]

    fns = {
        _key(name, precision, b): functools.partial(entry["runtime"].run, feeds[b])
        for (name, precision), entry in loaded.items()
        for b in sizes
    }
    per_round = max(1, iters // rounds)
    timed = time_interleaved(fns, warmup=0, rounds=rounds, per_round=per_round) if fns else None
    keys = [(n, p, b) for (n, p) in loaded for b in sizes]
    times = {key: timed.wall[_key(*key)] for key in keys} if timed else {}
    cpu_times = {key: timed.cpu[_key(*key)] for key in keys} if timed else {}

    results = []
    for (name, precision), entry in loaded.items():
        per_size = {}
        for b in sizes:
            t = np.asarray(times[(name, precision, b)]) * 1e3
            per_size[str(b)] = {
                "median_ms": float(np.median(t)),
                "p95_ms": float(np.percentile(t, 95)),
                "throughput": float(b / (np.median(t) / 1e3)),
                # CPU seconds of this process per call (all its threads): steadier than wall
                # time when neighbours load the machine.
                "cpu_ms": 1e3 * float(np.median(cpu_times[(name, precision, b)])),
            }
            cpu_s = per_size[str(b)]["cpu_ms"] / 1e3
            per_size[str(b)]["cpu_throughput"] = float(b / cpu_s) if cpu_s > 0 else None
        lat = times[(name, precision, latency_batch)] if latency_batch in sizes else None  # seconds
        results.append(
            {
                "backend": name,
                "precision": precision,
                "device": str(entry["describe"].get("device", "cpu")),
                "describe": entry["describe"],
                "load_s": entry["load_s"],
                "latency_ms": None
                if lat is None
                else {
                    "batch": latency_batch,
                    **percentiles([t * 1e3 for t in lat], (50, 95, 99)),
                    "mean": 1e3 * float(np.mean(lat)),
                },
                "batches": per_size,
            }
        )
    result = {
        "suite": "engines",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "export": {
            "dir": str(spec.directory),
            "modalities": spec.modalities,
            "onnx_sha256": spec.hashes.get("model.onnx"),
            "model": spec.model.get("config"),
        },
        "settings": {
            "batch_sizes": sizes,
            "warmup": warmup,
            "iters": per_round * rounds,
            "rounds": rounds,
            "threads": threads,
            "precisions": list(precisions),
            "latency_batch": latency_batch,
            "sequence_lengths": {
                k: int(v.shape[1])
                for k, v in flatten_batch(batches_by_size[sizes[0]]).items()
                if k.endswith("_mask")
            },
        },
        "results": results,
        "skipped": skipped,
    }
    result["metrics"] = flat_metrics(result)
    if reference:
        # The same fixed workload timed in this run lets mmfurnace.bench.regression compare
        # this result with a baseline from a faster or busier machine.
        result["reference"] = reference_workload()
    return result


def _key(name: str, precision: str, batch: int) -> str:
    return f"{name}/{precision}/b{batch}"


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _load(
    export_dir: str | Path,
    names: Sequence[str],
    precisions: Sequence[str],
    threads: int | None,
    options: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, str]]]:
    loaded: dict[tuple[str, str], dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    for name in names:
        cls = RUNTIMES[name]
        ok, why = cls.available()
        for precision in precisions:
            if not ok:
                skipped.append({"backend": name, "precision": precision, "reason": why})
                continue
            if precision not in cls.supported_precisions():
                skipped.append(
                    {
                        "backend": name,
                        "precision": precision,
                        "reason": f"{name} does not run {precision} here",
                    }
                )
                continue
            start = time.perf_counter()
            try:
                rt = cls(
                    export_dir,
                    graph=FULL_GRAPH,
                    precision=precision,
                    threads=threads,
                    **dict((options or {}).get(name, {})),
                )
            except Exception as err:  # report and go on with the other runtimes
                skipped.append(
                    {
                        "backend": name,
                        "precision": precision,
                        "reason": f"{type(err).__name__}: {err}"[:300],
                    }
                )
                continue
            loaded[(name, precision)] = {
                "runtime": rt,
                "describe": _jsonable(rt.describe()),
                "load_s": time.perf_counter() - start,
            }
    return loaded, skipped


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


