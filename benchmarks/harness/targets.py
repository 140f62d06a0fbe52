"""Targets judged on measured values only: a figure that was not measured never passes.

t = {"vs_naive": target(ratio(shipped, naive), 10.0, ">=", "shipped / naive max rps")}
results["targets"] = verdict(t)   # {"all_passed": ..., "vs_naive": {...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

Op = Literal["<=", ">=", "=="]
# {"all_passed": bool, <name>: Target, ...}: what `verdict` makes and the results hold. Not a
# TypedDict: the target names are the benchmark's own.
Verdict = dict[str, Any]


class Target(TypedDict):
    """One target as the results JSON records it."""

    value: Any  # the measured figure (None: not measured)
    threshold: Any
    op: Op
    passed: bool
    what: str  # how the value was measured, for the report


def target(value: Any, threshold: Any, op: Op, what: str, *, digits: int | None = None) -> Target:
    """Judge `value op threshold`. With `digits`, a float value is shown rounded but judged
    as measured, so 0.69983 shows as 0.6998 and fails a 0.7 target rather than passing as 0.7."""
    if value is None:
        passed = False
    elif op == "<=":
        passed = value <= threshold
    elif op == ">=":
        passed = value >= threshold
    else:
        passed = value == threshold
    shown = round(value, digits) if digits is not None and isinstance(value, float) else value
    return {"value": shown, "threshold": threshold, "op": op, "passed": bool(passed), "what": what}


def verdict(targets: Mapping[str, Target]) -> Verdict:
    """The targets under their names, after `all_passed`."""
    return {"all_passed": all(t["passed"] for t in targets.values()), **targets}


def judged(targets: Verdict) -> dict[str, Target]:
    """The targets of a `verdict` (read back from JSON, say), without `all_passed`."""
    return {name: t for name, t in targets.items() if name != "all_passed"}


def ratio(a: float | None, b: float | None, digits: int | None = None) -> float | None:
    """a / b, None when either is missing or b is not positive; rounded with `digits`."""
    if a is None or b is None or b <= 0:
        return None
    return a / b if digits is None else round(a / b, digits)
