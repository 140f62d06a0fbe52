"""The live-catalog benchmark's trace (`benchmarks.catalog_live`): every answer of a load run
with its item IDs (`LOCUST_TRACE_ITEMS=1`), which items the load's answers name, and leaks.

    answers = read_item_trace(run.trace_path)
    count_leaks(answers, unavailable, since=clean_from, until=restored_at)["answers"]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import orjson

from benchmarks.harness.trace import Answer


@dataclass(frozen=True)
class TracedAnswer(Answer):
    items: tuple[str, ...] = ()  # the answer's item IDs, best first


class Leaks(TypedDict):
    """Answers that named an item while it was unavailable."""

    answers: int
    answers_in_window: int
    window_s: float
    per_host: dict[str, int]  # leaking answers per replica
    items: int  # how many of the items leaked
    most_leaked: list[tuple[str, int]]
    first_at_s: float | None  # into the window


def parse_trace_line(line: str) -> TracedAnswer:
    """One line of a locust trace written with LOCUST_TRACE_ITEMS=1:
    `start,ms,status,version,host,["id",...]` (the IDs last, as a JSON array)."""
    t, ms, status, version, host, items = line.split(",", 5)
    ids = orjson.loads(items)
    if not isinstance(ids, list):
        raise ValueError(f"trace line without an item list: {line[:200]!r}")
    return TracedAnswer(
        float(t), float(ms), int(status), version, int(host), tuple(str(i) for i in ids)
    )


def read_item_trace(path: Path) -> list[TracedAnswer]:
    return [parse_trace_line(x) for x in path.read_text(encoding="utf-8").splitlines() if x]


def item_counts(answers: Iterable[TracedAnswer]) -> Counter[str]:
    """How many 200 answers named each item."""
    counts: Counter[str] = Counter()
    for a in answers:
        if a.status == 200:
            counts.update(set(a.items))
    return counts


def choose_items(counts: Counter[str], n: int, *, fill: Sequence[str] = ()) -> list[str]:
    """The `n` items named most often (ties by ID, so runs agree), topped up from `fill` (in
    its order) when fewer than `n` were named at all."""
    chosen = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
    seen = set(chosen)
    for i in fill:
        if len(chosen) >= n:
            break
        if i and i not in seen:
            chosen.append(i)
            seen.add(i)
    return chosen


def naming(answers: Iterable[TracedAnswer], items: set[str]) -> list[TracedAnswer]:
    """The 200 answers that name at least one of `items`."""
    return [a for a in answers if a.status == 200 and not items.isdisjoint(a.items)]


def count_leaks(
    answers: Sequence[TracedAnswer], items: set[str], *, since: float, until: float
) -> Leaks:
    """Answers started in [since, until) that name one of `items` (unavailable then)."""
    window = [a for a in answers if since <= a.start < until]
    leaked = naming(window, items)
    names = Counter(i for a in leaked for i in a.items if i in items)
    return {
        "answers": len(leaked),
        "answers_in_window": len(window),
        "window_s": round(until - since, 3),
        "per_host": {
            f"r{h + 1}": sum(1 for a in leaked if a.host == h)
            for h in sorted({a.host for a in window})
        },
        "items": len(names),
        "most_leaked": names.most_common(10),
        "first_at_s": round(min(a.start for a in leaked) - since, 3) if leaked else None,
    }
