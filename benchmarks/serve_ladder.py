"""The serving benchmark's ladder: offered loads in order until one breaks, then the boundary
of the latency bound narrowed (`climb`); the highest rate within the bound (`max_rps`).

    levels = climb([100, 250, 500], run_level, refine=4)
    max_rps(levels)      # None when no level was within p99 <= 50 ms and <= 1% failures
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from benchmarks.harness.load import Level

P99_LIMIT_MS = 50.0  # max_rps_at_p99_50ms
STOP_P99_MS = 200.0  # a ladder stops after the first level beyond either of these
STOP_FAILURES = 0.01
MIN_RPS = 5.0  # how far below the ladder a variant over the limit at its first level is tried


def qualifies(level: Level, p99_limit_ms: float = P99_LIMIT_MS) -> bool:
    """Within the latency bound: p99 <= the limit and at most 1% failures."""
    p99 = level.get("p99_ms")
    return p99 is not None and p99 <= p99_limit_ms and level["failures"] <= STOP_FAILURES


def breaks(level: Level, stop_p99_ms: float = STOP_P99_MS) -> bool:
    p99 = level.get("p99_ms")
    return p99 is None or p99 > stop_p99_ms or level["failures"] > STOP_FAILURES


def _next_refinement(done: Sequence[Level], p99_limit_ms: float, resolution: float) -> float | None:
    """The geometric middle between the highest level within the bound and the next one
    beyond it; None when there is no such pair or they are less than `resolution` apart."""
    good = [lv["offered_rps"] for lv in done if qualifies(lv, p99_limit_ms)]
    if not good:
        return None
    g = max(good)
    above = [
        lv["offered_rps"]
        for lv in done
        if lv["offered_rps"] > g and not qualifies(lv, p99_limit_ms)
    ]
    if not above or min(above) / g < resolution:
        return None
    return round(math.sqrt(g * min(above)), -1 if g >= 100 else 0)


def climb(
    levels: Sequence[float],
    run_level: Callable[[float], Level],
    *,
    p99_limit_ms: float = P99_LIMIT_MS,
    stop_p99_ms: float = STOP_P99_MS,
    refine: int = 4,
    resolution: float = 1.05,
    min_rps: float = MIN_RPS,
) -> list[Level]:
    """Run the ladder in order until a level breaks, then narrow the p99 bound; sorted levels.

    A variant already over `p99_limit_ms` at the first level is tried at halved loads (down
    to `min_rps`) so a slow baseline still gets a figure. Up to `refine` more levels bisect
    (on a log scale) between the highest level within the bound and the next level beyond
    it, until the two are less than `resolution` apart: the figure is then at most that far
    below the true bound, for every variant alike."""
    done: list[Level] = []
    for offered in levels:
        level = run_level(float(offered))
        done.append(level)
        if breaks(level, stop_p99_ms):
            break
    offered = float(levels[0])
    while not any(qualifies(lv, p99_limit_ms) for lv in done) and offered / 2 >= min_rps:
        offered /= 2
        done.append(run_level(offered))
    for _ in range(refine):
        middle = _next_refinement(done, p99_limit_ms, resolution)
        if middle is None:
            break
        done.append(run_level(middle))
    return sorted(done, key=lambda lv: lv["offered_rps"])


def max_rps(levels: Sequence[Level], p99_limit_ms: float = P99_LIMIT_MS) -> float | None:
    """The highest achieved rate among levels within the latency bound."""
    ok = [lv["rps"] for lv in levels if qualifies(lv, p99_limit_ms) and lv.get("rps")]
    return max(x for x in ok if x is not None) if ok else None


def at_max(levels: Sequence[Level], best: float | None) -> list[Level]:
    """The levels within the bound whose achieved rate is `best`."""
    return [lv for lv in levels if qualifies(lv) and lv.get("rps") == best]
