"""Direct probes of every replica (`benchmarks.catalog_live`): bodies whose answers name the
chosen items, sent in rounds until a change shows, and when it first showed.

    with FleetProbe(fleet.urls, probes.bodies) as probe:
        probe.round_all()                       # warm: connections open, threads started
        rows = probe.poll_fleet([names_none(items)] * 2, since=t_answer, timeout_s=10)
    slowest(rows)                               # the slowest replica's propagation
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypedDict

import httpx
import orjson

from benchmarks.catalog_trace import TracedAnswer, choose_items, item_counts
from benchmarks.harness.fleet import JSON_HEADERS, Fleet

MAX_CANDIDATES = 1000  # the service's default max_candidates (and max_k)

# A condition on one round's answers (each probe's item IDs), in probe order.
Condition = Callable[[list[list[str]]], bool]


class Convergence(TypedDict):
    """When a replica's probe rounds first met their condition (seconds from the call's
    answer); `propagation_s` None: never within the timeout."""

    rounds: int
    round_ms_max: float | None
    first_round_s: float | None  # when polling began: what the lower bound cannot go below
    propagation_s: float | None
    propagation_lower_s: float | None
    relapses: int


class ReplicaConvergence(Convergence):
    replica: str


def cover(answers: Sequence[Sequence[str]], targets: set[str], n: int) -> list[int]:
    """Up to `n` indexes into `answers`, chosen greedily to name as many of `targets` as
    possible; stops when no answer adds one."""
    left, chosen = set(targets), []
    for _ in range(n):
        gains = [len(left.intersection(a)) for a in answers]
        best = max(range(len(gains)), key=gains.__getitem__, default=None)
        if best is None or gains[best] == 0:
            break
        chosen.append(best)
        left.difference_update(answers[best])
    return chosen


def rerank_probes(history: Sequence[str], items: Sequence[str]) -> list[bytes]:
    """Rerank bodies over `items` themselves (k = their count, at most MAX_CANDIDATES per
    body): before the items are marked unavailable every one of them is in the answers."""
    out = []
    for lo in range(0, len(items), MAX_CANDIDATES):
        chunk = list(items[lo : lo + MAX_CANDIDATES])
        out.append(orjson.dumps({"history": list(history), "k": len(chunk), "candidates": chunk}))
    return out


def names_none(items: set[str]) -> Condition:
    """No probe's answer names any of `items`."""
    return lambda answers: all(items.isdisjoint(a) for a in answers)


def names_any(items: set[str]) -> Condition:
    """Some probe's answer names one of `items`."""
    return lambda answers: any(not items.isdisjoint(a) for a in answers)


def names_again(baseline: Sequence[Sequence[str]], items: set[str]) -> Condition:
    """Every probe's answer names again each of `items` that it named in `baseline`."""
    wanted = [items.intersection(a) for a in baseline]
    return lambda answers: all(w.issubset(a) for w, a in zip(wanted, answers, strict=True))


@dataclass(frozen=True)
class Round:
    start: float  # unix seconds
    end: float
    ok: bool  # every probe answered 200 and the condition held


def convergence(rounds: Sequence[Round], since: float) -> Convergence:
    """When a replica's probe rounds first met the condition, measured from `since`: the end
    of that round (an upper bound: the change was in place by then) and its start (the
    condition did not hold at the end of the round before); rounds after it that failed the
    condition again are relapses."""
    first = next((i for i, r in enumerate(rounds) if r.ok), None)
    spans = [r.end - r.start for r in rounds]
    out: Convergence = {
        "rounds": len(rounds),
        "round_ms_max": round(max(spans) * 1e3, 1) if spans else None,
        "first_round_s": round(rounds[0].start - since, 3) if rounds else None,
        "propagation_s": None,
        "propagation_lower_s": None,
        "relapses": 0,
    }
    if first is not None:
        out["propagation_s"] = round(rounds[first].end - since, 3)
        out["propagation_lower_s"] = round(max(0.0, rounds[first].start - since), 3)
        out["relapses"] = sum(1 for r in rounds[first + 1 :] if not r.ok)
    return out


def slowest(per_replica: Sequence[Convergence]) -> float | None:
    """The slowest replica's propagation; None when one never got there."""
    values = [r["propagation_s"] for r in per_replica]
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def recommend_items(client: httpx.Client, url: str, body: bytes) -> tuple[int, list[str]]:
    """(status, the answer's item IDs) of a /recommend; status 0 when no answer came."""
    try:
        r = client.post(url + "/recommend", content=body, headers=JSON_HEADERS, timeout=10)
    except httpx.HTTPError:
        return 0, []
    if r.status_code != 200:
        return r.status_code, []
    return 200, [str(i["item_id"]) for i in r.json()["items"]]


class FleetProbe:
    """Direct probes of every replica: a warm HTTP client and a thread pool per replica, made
    (and warmed by `round_all`) before an admin call, so polling starts the moment the call
    answers; a fresh client (an SSL context, new connections) costs tens of ms on a busy
    core, which would read as propagation time. A round sends its probes at once: it lasts
    about the slowest answer, not their sum."""

    def __init__(self, urls: Sequence[str], probes: Sequence[bytes]) -> None:
        self.urls, self.probes = list(urls), list(probes)
        self.clients = [httpx.Client() for _ in self.urls]
        self.pools = [ThreadPoolExecutor(len(self.probes)) for _ in self.urls]
        self.runner = ThreadPoolExecutor(len(self.urls))

    def __enter__(self) -> FleetProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in [*self.pools, self.runner]:
            pool.shutdown()
        for client in self.clients:
            client.close()

    def answers(self, i: int) -> list[tuple[int, list[str]]]:
        """Replica i's (status, item IDs) for every probe, sent at once."""
        client, url = self.clients[i], self.urls[i]
        return list(self.pools[i].map(lambda b: recommend_items(client, url, b), self.probes))

    def round_all(self) -> list[list[list[str]]]:
        """One round on every replica (connections opened, threads started): per replica,
        each probe's item IDs."""
        got = list(self.runner.map(self.answers, range(len(self.urls))))
        return [[items for _, items in g] for g in got]

    def poll(
        self, i: int, condition: Condition, *, since: float, timeout_s: float, settle_s: float
    ) -> list[Round]:
        """Rounds on replica i until `condition` held in one (or `timeout_s` after `since`),
        then `settle_s` more seconds of rounds (relapses)."""
        rounds: list[Round] = []
        stop_at = since + timeout_s
        while time.time() < stop_at:
            t0 = time.time()
            got = self.answers(i)
            ok = all(status == 200 for status, _ in got) and condition([x for _, x in got])
            rounds.append(Round(t0, time.time(), ok))
            if ok and sum(r.ok for r in rounds) == 1:
                stop_at = time.time() + settle_s
        return rounds

    def poll_fleet(
        self,
        conditions: Sequence[Condition],
        *,
        since: float,
        timeout_s: float,
        settle_s: float = 1.0,
    ) -> list[ReplicaConvergence]:
        """`poll` on every replica at once (replica i against `conditions[i]`); each one's
        `convergence`."""
        futures = [
            self.runner.submit(self.poll, i, c, since=since, timeout_s=timeout_s, settle_s=settle_s)
            for i, c in enumerate(conditions)
        ]
        return [
            {"replica": f"r{i + 1}", **convergence(f.result(), since)}
            for i, f in enumerate(futures)
        ]


def scan(url: str, bodies: Sequence[bytes], *, threads: int = 8) -> list[list[str]]:
    """Every body's answer (item IDs) from one replica, no load running."""
    with httpx.Client(limits=httpx.Limits(max_connections=threads)) as client:

        def one(body: bytes) -> list[str]:
            status, items = recommend_items(client, url, body)
            if status != 200:
                raise RuntimeError(f"scan: /recommend answered {status}")
            return items

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, bodies))


@dataclass
class Probes:
    """What the phases poll every replica with, chosen before the load runs."""

    items: list[str]  # the chosen items (made unavailable; originals of the new items)
    rerank: list[bytes]  # rerank bodies over the chosen items
    full: list[bytes]  # full-catalog bodies whose answers named the most of them
    full_named: int  # how many of the chosen items the full bodies named
    baseline: list[list[list[str]]] = field(default_factory=list)  # per replica, per probe

    @property
    def bodies(self) -> list[bytes]:
        return self.rerank + self.full


def choose_probes(
    fleet: Fleet,
    workload_full: Sequence[bytes],
    warmup: Sequence[TracedAnswer],
    *,
    n_items: int,
    n_bodies: int,
    catalog: Sequence[str],
) -> Probes:
    """The chosen items (most named by the warm-up's answers; then by the scan's, then in
    `catalog` order, should the warm-up name too few), the full-catalog bodies
    covering most of them (from a scan of every full-catalog body on r1) and a rerank over
    them; every replica's answers to those probes now (the baseline)."""
    answers = scan(fleet.urls[0], workload_full)
    scanned: Counter[str] = Counter(i for a in answers for i in a)
    fill = [i for i, _ in scanned.most_common()] + list(catalog)
    items = choose_items(item_counts(warmup), n_items, fill=fill)
    chosen = set(items)
    picks = cover(answers, chosen, n_bodies)
    # a real shopper's history that names none of them (seen items are left out of answers)
    histories: list[list[str]] = [orjson.loads(b)["history"] for b in workload_full]
    history = next((h for h in histories if chosen.isdisjoint(h)), [])
    probes = Probes(
        items=items,
        rerank=rerank_probes(history, items),
        full=[workload_full[i] for i in picks],
        full_named=len(chosen.intersection(i for p in picks for i in answers[p])),
    )
    with FleetProbe(fleet.urls, probes.bodies) as probe:
        probes.baseline = probe.round_all()
    return probes
