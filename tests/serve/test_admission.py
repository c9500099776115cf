"""Admission by latency budget: the estimate, the refusal, and the engine shedding a burst at
the door so that what it admits fits the budget."""

from __future__ import annotations

import asyncio

import pytest

from mmfurnace.serve.admission import DRAIN_MEMORY, EWMA_WEIGHT, Admission, StageRate
from mmfurnace.serve.config import ServeConfig
from mmfurnace.serve.engine import InferenceEngine
from mmfurnace.serve.errors import Overloaded


def test_stage_rate_learns_from_full_batches_only() -> None:
    rate = StageRate(parallel=2, min_rows=4)
    rate.observe(1, 0.010)  # a lone row: its fixed cost would make every row look dear
    assert rate.row_s is None
    rate.observe(8, 0.008)
    assert rate.per_row_s == pytest.approx(0.001)
    assert rate.row_s == pytest.approx(0.0005)  # two batches run at once
    rate.observe(4, 0.008)
    assert rate.per_row_s == pytest.approx(0.001 + EWMA_WEIGHT * (0.002 - 0.001))


def test_drain_rate_takes_over_once_rows_wait() -> None:
    """Two workers finishing 8-row batches every 10 ms (alternating) with rows queued drain a
    row every 1.25 ms, whatever each batch's own run time says."""
    rate = StageRate(parallel=2, min_rows=4)
    rate.observe(8, 0.002, done_at=1.000, waiting=0)  # batch time alone: 0.125 ms per row
    assert rate.row_s == pytest.approx(0.000125)
    rate.observe(8, 0.002, done_at=1.100, waiting=0)  # idle gap, nothing waiting: not a drain
    assert rate.row_s == pytest.approx(0.000125)
    for k in range(1, 40):
        rate.observe(8, 0.002, done_at=1.100 + 0.010 * k, waiting=5)
    assert rate.row_s == pytest.approx(0.00125)
    # The overload passes: batches finish with nothing waiting; the drain goes stale and the
    # batch-time estimate takes over again (a stale slow drain would shed a light load forever).
    for k in range(DRAIN_MEMORY):
        rate.observe(8, 0.002, done_at=3.0 + k, waiting=0)
    assert rate.row_s == pytest.approx(0.00125)
    rate.observe(8, 0.002, done_at=30.0, waiting=0)
    assert rate.row_s == pytest.approx(0.000125)


def test_admission_sheds_what_would_outlast_the_budget_or_the_deadline() -> None:
    adm = Admission(budget_s=0.050, retry_after_s=3)
    adm.add_stage("model", parallel=1)
    adm.check(ahead=10_000)  # nothing timed yet: only the row bounds apply
    adm.observe("model", rows=10, run_s=0.010)  # 1 ms per row
    adm.check(ahead=0)  # an idle server admits everything
    adm.check(ahead=50)  # 50 ms: within the budget
    with pytest.raises(Overloaded, match="51 rows ahead need about 51 ms, more than the latency budget of 50 ms") as err:
        adm.check(ahead=51)
    assert err.value.retry_after_s == 3
    with pytest.raises(Overloaded, match="more than the request deadline of 20 ms"):
        adm.check(ahead=21, deadline_s=0.020)
    adm.check(ahead=40, deadline_s=1.0)  # a long deadline does not lift the budget
    with pytest.raises(Overloaded, match="latency budget"):
        adm.check(ahead=51, deadline_s=1.0)


def test_auto_budget_is_one_and_a_half_full_batches_at_the_measured_rate() -> None:
    adm = Admission.from_config("auto", max_batch_size=64, retry_after_s=1)
    adm.add_stage("model", parallel=2)
    assert adm.budget() is None
    adm.check(ahead=10_000)  # nothing timed yet: only the row bounds apply
    adm.observe("model", rows=64, run_s=0.256)  # 4 ms a row per slot, 2 ms with two slots
    assert adm.budget() == pytest.approx(0.192)  # 1.5 x 64 rows x 2 ms
    adm.check(ahead=96)
    with pytest.raises(Overloaded, match="97 rows ahead need about 194 ms, more than the latency budget of 192 ms"):
        adm.check(ahead=97)
    slow = Admission.from_config("auto", max_batch_size=32, retry_after_s=1)
    slow.add_stage("model", parallel=2)
    slow.observe("model", rows=8, run_s=1.6)  # a pretrained backbone: 0.1 s a row with two slots
    slow.check(ahead=40)  # 4 s of work ahead: within 1.5 batches of this model, not shed
    assert slow.budget() == pytest.approx(4.8)
    fast = Admission.from_config("auto", max_batch_size=4, retry_after_s=1)
    fast.add_stage("model", parallel=1)
    fast.observe("model", rows=4, run_s=0.0004)
    assert fast.budget() == pytest.approx(0.100)  # the floor
    assert Admission.from_config(None, 32, 1).budget() is None
    assert Admission.from_config(200, 32, 1).budget() == pytest.approx(0.2)


def test_budget_setting_is_validated() -> None:
    from mmfurnace.errors import ConfigError
    from mmfurnace.serve.config import load_serve_config

    assert load_serve_config(None, ["latency_budget_ms=auto"]).latency_budget_ms == "auto"
    assert load_serve_config(None, ["latency_budget_ms=120"]).latency_budget_ms == 120
    for bad in ("latency_budget_ms=-5", "latency_budget_ms=fast"):
        with pytest.raises(ConfigError, match="latency_budget_ms"):
            load_serve_config(None, [bad])


def test_slowest_stage_sets_the_estimate() -> None:
    adm = Admission(budget_s=None)
    adm.add_stage("encoder_image", parallel=2)
    adm.add_stage("fusion_head", parallel=1)
    adm.observe("encoder_image", 4, 0.004)  # 0.5 ms per row with two in flight
    adm.observe("fusion_head", 4, 0.008)  # 2 ms per row
    assert adm.row_seconds() == pytest.approx(0.002)
    adm.check(ahead=10_000)  # no budget and no deadline: never sheds
    with pytest.raises(Overloaded, match="request deadline"):
        adm.check(ahead=11, deadline_s=0.020)


def test_engine_admits_a_burst_up_to_the_budget_and_sheds_the_rest(export_dir, samples) -> None:
    """40 requests at once, each row timed at 10 ms on 2 workers, a 50 ms budget: the first
    11 are admitted (up to 10 rows ahead = 50 ms), the other 29 refused at the door."""
    cfg = ServeConfig(preprocess_workers=2, latency_budget_ms=50, max_queue=4096, max_concurrency=4096)
    engine = InferenceEngine.from_export(export_dir, cfg)

    async def burst():
        async with engine:
            await engine.infer(samples[0])
            engine.admission.stages["model"].per_row_s = 0.010
            results = await asyncio.gather(*(engine.infer(samples[i % len(samples)]) for i in range(40)),
                                           return_exceptions=True)
            after = await engine.infer(samples[1])  # still serving once the burst is answered
            return results, after

    results, after = asyncio.run(burst())
    shed = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 11
    assert len(shed) == 29
    assert all("latency budget of 50 ms" in str(e) for e in shed)
    assert after.label in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert engine.metrics.value("mmfurnace_inference_total", outcome="overloaded") == 29
