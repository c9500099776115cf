"""Admission by latency budget: shed at the door what could not be served in time.

Triton's queue policy (a queue bounded in time: requests that would wait past their timeout
are rejected) and Ray Serve's ``max_queued_requests``, sized in time rather than in rows:

    estimated wait = rows admitted and not yet answered x seconds per row at the bottleneck

Seconds per row is the stage's drain rate, measured where it matters — while rows wait: the
time between consecutive batch completions of a stage that had rows queued, over the rows
those batches held (running means of both). That is the rate at which a queue in front of
the stage empties, whatever it costs inside: parallel workers, the hand-offs to them, the
event loop answering, and the share of the CPU the server gets on a machine running other
work. Measured at 64 clients on a loaded 2-core machine (three runs, ms per row): drain
4.27 / 3.80 / 3.52 against 4.77 / 4.31 / 3.76 actually served, while batch run time / rows /
parallel batches read 3.54 / 2.81 / 3.10 (it misses the hand-offs and a slot's idle gaps).
Until a stage has been seen with rows waiting, its batches of at least ``min_rows`` rows give
the estimate (run time per row over the batches it runs at once); small batches are left
out, their fixed cost would make every row look several times dearer than in the full
batches an overload forms.

The budget is a number of milliseconds, or "auto": the time the bottleneck takes to serve
``AUTO_BATCHES`` full batches at its measured rate (at least ``AUTO_FLOOR_S``). A fixed 200 ms
shed a model with pretrained backbones (~0.1-0.2 s a row) at a few concurrent clients, and
let the demo's model queue longer than it needs: at 4,500 req/s offered (5x) for 15 s the
served p99 was 406 ms with 200 ms, 266 ms with 100 ms, at the same goodput (p99 at capacity
140 ms). The demo's model under 2x overload (open loop, 30 s; the admission bound is then
AUTO_BATCHES x max_batch_size rows in flight, and an admitted row waits about that many rows'
service): 3 full batches -> served p99 3.84x the p99 at capacity, goodput 0.79x; 2 -> 3.04x,
0.77x; 1.5 -> 2.01x, 0.81x, with the same throughput at capacity (1,028 vs 1,025 req/s: its
rows cost their decoding, which batching does not share). The floor is 100 ms: with
ServeConfig's max_batch_size (32), 1.5 batches are 48 rows, ~50 ms of this model, and 64 closed-
loop clients (64 rows in flight, p99 ~100 ms at capacity) then got 503 for 45 of 3,000 requests;
with the 100-ms floor 14 (3 batches: none). A latency budget sheds what it estimates beyond it.

A request whose estimated wait exceeds ``min(latency budget, its own deadline)`` is refused at
once (Overloaded -> HTTP 503 + Retry-After) — before its body is parsed or preprocessed — so
under any overload the rows that are admitted are served within about the budget, and the
work that waits is bounded in time as well as in rows. An idle server admits everything
(nothing waits ahead), and until the first batch has been timed only the row bounds apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmfurnace.serve.errors import Overloaded

# Weight of the newest batch in the running mean: ~20 batches of memory, so the estimate
# follows a change of load within a fraction of a second at serving rates.
EWMA_WEIGHT = 0.05
# Batches without rows waiting after which the drain rate no longer counts (the EWMA's memory).
DRAIN_MEMORY = 20
# latency_budget_ms "auto": this many full batches at the bottleneck's rate, at least the floor.
AUTO_BATCHES = 1.5
AUTO_FLOOR_S = 0.100


def _mean(old: float | None, x: float) -> float:
    return x if old is None else old + EWMA_WEIGHT * (x - old)


@dataclass
class StageRate:
    """Running seconds per row of one stage that runs ``parallel`` batches at once: its drain
    rate once seen with rows waiting, else from its batches of at least ``min_rows`` rows."""

    parallel: int
    min_rows: int = 1
    per_row_s: float | None = None  # batch run time / rows (one batch slot)
    drain_interval_s: float | None = None  # mean time between completions with rows waiting
    drain_rows: float | None = None  # mean rows of those batches
    last_done: float | None = None
    since_drain: int = 0  # batches finished since the last one with rows waiting

    def observe(self, rows: int, run_s: float, *, done_at: float | None = None, waiting: int = 0) -> None:
        """One finished batch: ``rows`` rows run in ``run_s``; ``done_at`` (monotonic s) when
        it finished, ``waiting``: rows queued for the stage at that moment."""
        if done_at is not None:
            last, self.last_done = self.last_done, done_at
            if waiting > 0 and last is not None and done_at > last:
                self.drain_interval_s = _mean(self.drain_interval_s, done_at - last)
                self.drain_rows = _mean(self.drain_rows, rows)
                self.since_drain = 0
            else:
                self.since_drain += 1
        if rows >= max(1, self.min_rows) and run_s >= 0:
            self.per_row_s = _mean(self.per_row_s, run_s / rows)

    @property
    def row_s(self) -> float | None:
        """Seconds of this stage's time per row with all its batches busy."""
        # A drain measured during an overload that has passed is stale: left in place, a slow
        # one would keep shedding a light load that never queues enough rows to correct it.
        if self.drain_interval_s is not None and self.drain_rows and self.since_drain <= DRAIN_MEMORY:
            return self.drain_interval_s / self.drain_rows
        return None if self.per_row_s is None else self.per_row_s / self.parallel


@dataclass
class Admission:
    """The latency-budget check (budget_s None: off). Stages are registered by name."""

    budget_s: float | None
    retry_after_s: float = 1.0
    stages: dict[str, StageRate] = field(default_factory=dict)
    auto_rows: float | None = None  # "auto" budget: the time to serve this many rows (budget_s None)

    @classmethod
    def from_config(cls, budget_ms: float | str | None, max_batch_size: int, retry_after_s: float) -> Admission:
        """From ServeConfig's latency_budget_ms (ms, "auto" or None) and max_batch_size."""
        if budget_ms == "auto":
            return cls(None, retry_after_s, auto_rows=AUTO_BATCHES * max_batch_size)
        return cls(None if budget_ms is None else float(budget_ms) / 1000.0, retry_after_s)

    def budget(self) -> float | None:
        """The latency budget now (s): fixed, or "auto" from the measured rate (None until known)."""
        if self.auto_rows is None:
            return self.budget_s
        row_s = self.row_seconds()
        return None if row_s is None else max(AUTO_FLOOR_S, self.auto_rows * row_s)

    def add_stage(self, name: str, parallel: int, min_rows: int = 1) -> None:
        self.stages[name] = StageRate(max(1, parallel), min_rows)

    def observe(self, stage: str, rows: int, run_s: float, *, done_at: float | None = None, waiting: int = 0) -> None:
        rate = self.stages.get(stage)
        if rate is not None:
            rate.observe(rows, run_s, done_at=done_at, waiting=waiting)

    def row_seconds(self) -> float | None:
        """Seconds per row at the bottleneck stage (None until a batch has been timed)."""
        known = [r.row_s for r in self.stages.values() if r.row_s is not None]
        return max(known) if known else None

    def estimated_wait_s(self, ahead: int) -> float:
        """How long ``ahead`` admitted rows take to clear the bottleneck (0 when unknown)."""
        row_s = self.row_seconds()
        return 0.0 if row_s is None else ahead * row_s

    def check(self, ahead: int, deadline_s: float | None = None) -> None:
        """Raise Overloaded when the rows ``ahead`` would outlast the budget or the deadline."""
        budget = self.budget()
        limits = [x for x in (budget, deadline_s) if x is not None]
        if not limits or ahead <= 0:
            return
        limit = min(limits)
        wait = self.estimated_wait_s(ahead)
        if wait > limit:
            which = "latency budget" if limit == budget else "request deadline"
            raise Overloaded(
                f"shed at the door: {ahead} rows ahead need about {wait * 1000:.0f} ms, more than the "
                f"{which} of {limit * 1000:.0f} ms; retry later",
                retry_after_s=self.retry_after_s,
            )
