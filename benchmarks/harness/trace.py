"""The answers of a traced locust run (`LOCUST_TRACE`: one line per answer) and their summary.

answers = read_trace(run.trace_path)
summarize(answers, skip_s=2.0)["p99_ms"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict


@dataclass(frozen=True)
class Answer:
    start: float  # unix seconds
    ms: float
    status: int  # 0: no HTTP answer at all
    version: str
    host: int  # index of the replica that answered


class RunSummary(TypedDict):
    requests: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    versions_seen: list[str]
    statuses: dict[str, int]


def read_trace(path: Path) -> list[Answer]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        t, ms, status, version, host = line.split(",")
        out.append(Answer(float(t), float(ms), int(status), version, int(host)))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)


def in_windows(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(lo <= t <= hi for lo, hi in windows)


def failed(answers: Sequence[Answer]) -> int:
    """Answers other than 200."""
    return sum(1 for a in answers if a.status != 200)


def summarize(answers: Sequence[Answer], *, skip_s: float = 0.0) -> RunSummary:
    """Counts and latency percentiles of a run's answers (the first `skip_s` seconds left out
    of the percentiles, not of the counts)."""
    t0 = min((a.start for a in answers), default=0.0)
    timed = [a.ms for a in answers if a.start >= t0 + skip_s]
    return {
        "requests": len(answers),
        "failed": failed(answers),
        "p50_ms": percentile(timed, 50),
        "p99_ms": percentile(timed, 99),
        "max_ms": round(max(timed), 2) if timed else None,
        "versions_seen": sorted({a.version for a in answers if a.status == 200}),
        "statuses": {
            str(s): sum(1 for a in answers if a.status == s)
            for s in sorted({a.status for a in answers})
        },
    }
