"""The accuracy gate: every compressed variant may lose at most a budget of accuracy points
against its FP32 parent on the same runtime (measured in the same run, on the eval split), or
it is FAILED — marked so in the report, and not offered as the output a later step picks.

Budgets per method family (points of accuracy; override with ``compress(..., budget=)`` or
``mmfurnace compress --budget``): a variant that loses more than its budget is not the same
model any more, whatever it gains in speed or size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmfurnace.errors import ConfigError

BUDGETS = {
    "half": 1.0,  # fp16 / bf16
    "int8": 1.0,  # int8-dynamic, int8-static, qat, sensitivity
    "pruning": 1.5,  # prune-unstructured, prune-channel
    "student": 2.0,  # distill
}
PASS, FAILED = "PASS", "FAILED"


def budget_for(family: str, override: float | None = None) -> float:
    """The budget (points) of ``family``, or ``override`` when given (ConfigError if < 0)."""
    if override is not None:
        if not isinstance(override, (int, float)) or isinstance(override, bool) or not override >= 0:
            raise ConfigError(f"budget: {override!r} must be a number of accuracy points >= 0")
        return float(override)
    if family not in BUDGETS:
        raise ConfigError(f"no accuracy budget for method family {family!r}; known: {', '.join(BUDGETS)}")
    return BUDGETS[family]


def apply_gate(rows: Sequence[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """Set ``budget_pt`` and ``gate`` (PASS / FAILED) on each variant row of ``rows`` (rows
    with a ``delta_pt`` against their parent; parents get neither), in place. A drop of
    exactly the budget passes. Returns the FAILED rows."""
    failed = []
    for row in rows:
        if not row.get("parent") or row.get("delta_pt") is None:
            continue
        row["budget_pt"] = budget
        # the 1e-9 absorbs float noise in 100 * (a - b) for an accuracy equal to the budget
        row["gate"] = PASS if -row["delta_pt"] <= budget + 1e-9 else FAILED
        if row["gate"] == FAILED:
            failed.append(row)
    return failed


def describe_failures(failed: Sequence[dict[str, Any]]) -> str:
    """One line naming each FAILED row: ``variant@runtime lost X pt (budget Y)``."""
    return "; ".join(f"{r['variant']}@{r['backend']} lost {-r['delta_pt']:.2f} pt (budget {r['budget_pt']:g})"
                     for r in failed)
