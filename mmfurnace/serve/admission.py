"""Admission by latency budget: shed at the door what could not be served in time.

Triton's queue policy (a queue bounded in time: requests that would wait past their timeout
are rejected) and Ray Serve's ``max_queued_requests``, sized in time rather than in rows:

    estimated wait = rows admitted and not yet answered x per-row service time / parallelism

per-row service time: an exponentially weighted mean of (batch run time / batch size) over
the batches of the slowest stage that hold at least ``min_rows`` rows, parallelism: how many
batches that stage runs at once. Small batches are left out: their fixed cost per batch made
every row look several times dearer than in the full batches an overload forms, so the
estimate shed requests a 64-client load could be served without (measured: 248 served, 19,752
shed), and shedding kept the batches small. A
request whose estimated wait exceeds ``min(latency budget, its own deadline)`` is refused at
once (Overloaded -> HTTP 503 + Retry-After) — before its body is parsed or preprocessed — so
under any overload the rows that are admitted are served within the budget, and the work
that waits is bounded in time as well as in rows. An idle server admits everything (nothing
waits ahead), and until the first batch has been timed only the row bounds apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmfurnace.serve.errors import Overloaded

# Weight of the newest batch in the running mean: ~20 batches of memory, so the estimate
# follows a change of load within a fraction of a second at serving rates.
EWMA_WEIGHT = 0.05


@dataclass
class StageRate:
    """Running per-row service time of one stage that runs ``parallel`` batches at once,
    from its batches of at least ``min_rows`` rows."""

    parallel: int
    min_rows: int = 1
    per_row_s: float | None = None

    def observe(self, rows: int, run_s: float) -> None:
        if rows < max(1, self.min_rows) or run_s < 0:
            return
        x = run_s / rows
        self.per_row_s = x if self.per_row_s is None else self.per_row_s + EWMA_WEIGHT * (x - self.per_row_s)

    @property
    def row_s(self) -> float | None:
        """Seconds of this stage's time per row with all its batches busy."""
        return None if self.per_row_s is None else self.per_row_s / self.parallel


@dataclass
class Admission:
    """The latency-budget check (budget_s None: off). Stages are registered by name."""

    budget_s: float | None
    retry_after_s: float = 1.0
    stages: dict[str, StageRate] = field(default_factory=dict)

    def add_stage(self, name: str, parallel: int, min_rows: int = 1) -> None:
        self.stages[name] = StageRate(max(1, parallel), min_rows)

    def observe(self, stage: str, rows: int, run_s: float) -> None:
        rate = self.stages.get(stage)
        if rate is not None:
            rate.observe(rows, run_s)

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
        limits = [x for x in (self.budget_s, deadline_s) if x is not None]
        if not limits or ahead <= 0:
            return
        limit = min(limits)
        wait = self.estimated_wait_s(ahead)
        if wait > limit:
            which = "latency budget" if limit == self.budget_s else "request deadline"
            raise Overloaded(
                f"shed at the door: {ahead} rows ahead need about {wait * 1000:.0f} ms, more than the "
                f"{which} of {limit * 1000:.0f} ms; retry later",
                retry_after_s=self.retry_after_s,
            )
