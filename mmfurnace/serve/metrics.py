"""Prometheus metrics of one engine, in its own CollectorRegistry (nothing global leaks).

Names (all prefixed ``mmfurnace_``):
    requests_total{route,status}        HTTP requests by route template and status code
    inference_total{outcome}            engine rows: ok, bad_input, overloaded, timeout, error
    stage_seconds{stage}                per-request time per stage: preprocess, queue_<stage>,
                                        <stage> (encoder_image, fusion, model, ...), total
    batch_size{stage}                   rows per dispatched batch, per batched stage
    queue_depth{stage}                  rows waiting per batched stage (read at scrape time)
    inflight_rows                       rows admitted and not yet answered
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mmfurnace.serve.batcher import BatchStats

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The metrics one engine (and its HTTP app) update; ``render()`` gives the text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mmfurnace_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.outcomes = Counter(
            "mmfurnace_inference", "Rows answered by the engine, by outcome", ["outcome"], registry=r
        )
        self.stage_seconds = Histogram(
            "mmfurnace_stage_seconds", "Per-request seconds spent in each stage", ["stage"],
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "mmfurnace_batch_size", "Rows per dispatched batch", ["stage"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("mmfurnace_queue_depth", "Rows waiting per batched stage", ["stage"], registry=r)
        self.inflight = Gauge("mmfurnace_inflight_rows", "Rows admitted and not yet answered", registry=r)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.labels(stats.name).observe(stats.size)

    def observe_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- reading back (tests, benchmarks) ---------------------------------------------------

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0.0 when it has not been observed yet)."""
        got = self.registry.get_sample_value(name, labels or None)
        return 0.0 if got is None else float(got)

    def batch_summary(self, stage: str) -> dict[str, float]:
        """{"batches", "rows", "mean", "max_bucket"} of a stage's batch-size histogram."""
        count = self.value("mmfurnace_batch_size_count", stage=stage)
        total = self.value("mmfurnace_batch_size_sum", stage=stage)
        largest = 0.0
        previous = 0.0
        for bound in BATCH_BUCKETS:
            seen = self.value("mmfurnace_batch_size_bucket", stage=stage, le=f"{float(bound)}")
            if seen > previous:
                largest = float(bound)
            previous = seen
        return {"batches": count, "rows": total, "mean": total / count if count else 0.0, "max_bucket": largest}

    def stage_means(self) -> dict[str, float]:
        """stage -> mean seconds per request observed so far."""
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            if metric.name != "mmfurnace_stage_seconds":
                continue
            sums = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_sum")}
            counts = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_count")}
            out = {k: sums[k] / counts[k] for k in sums if counts.get(k)}
        return out
