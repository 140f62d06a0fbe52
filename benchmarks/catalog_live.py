"""Live-catalog benchmark: items made unavailable and new items added under load on a
two-replica fleet, Redis flushed under load, and a replica started after the flush.

    make bench-catalog [DATA=../shared/data/amazon-beauty.txt] [CATALOG_ARGS='--items 1000']
    python -m benchmarks.catalog_live --data ../shared/data/amazon-beauty.txt [--bundle DIR]

The fleet is the swap benchmark's (`benchmarks.swap`): one private redis-server (no
persistence: a FLUSHALL is the state vanishing), replica r1 bootstrapped with the served
bundle, r2 started empty (it follows the fleet), both pinned to core 0; locust pinned to
core 1 sends every request round-robin to the two replicas and records every answer, here
with the answer's item IDs (`LOCUST_TRACE_ITEMS=1`). The served bundle is the one `make
bench-compress` shipped, else a speed-only one (`benchmarks.serve.resolve_inputs`, as
`benchmarks.swap` picks it), under the version name `live-a`. Phases, in order:

1. capacity: a saturating locust run; the later runs offer `--load` (70%) of what it
   achieved. Then a traced warm-up at that load: the `--items` items its answers name most
   often are the ones made unavailable (so a leak would show in the load's answers), and
   their copies seed the new items;
2. unavailable: under load, `POST /admin/catalog/unavailable` (through r1) with those items;
   from its answer, every replica is polled directly (not through the load) with requests
   whose answers named them before (a rerank over the items themselves with k = their
   count, and the full-catalog bodies covering most of them) until no answer names any:
   the propagation time per replica. Every answer of the load started after the whole fleet
   was clean, and before they were marked available again (through r2), that names one of
   them is a leak;
3. new items: under load, `POST /admin/catalog/items/live-a` (through r2) with `--items`
   new IDs whose vectors are the chosen items' decoded vectors scaled by 1.05 plus small
   noise (so each outranks its original wherever the original scores above zero); the time
   until every replica answers at least one new ID to the full-catalog probe bodies;
4. flush: under load, FLUSHALL; the time until Redis holds the active version, the bundle
   archive and the catalog again (the replicas write back what they hold), and failed
   requests over the run. Then a third replica, started with no bootstrap bundle: seconds
   from its process start until /readyz answers 200 and it serves the fleet's version.

Writes benchmarks/results/catalog.json and catalog.md. `foldin` in the JSON copies the main
numbers of benchmarks/results/catalog-foldin.json when `python -m benchmarks.foldin` wrote
it (a separate command; nothing of it is measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson

from benchmarks.loadgen import Server, ServerError, free_port, pinned, run_locust
from benchmarks.provenance import cpu_model, git, host_info, python_exe, python_probe_ms
from benchmarks.swap import (
    APP,
    GATE_ENV,
    Answer,
    Fleet,
    LoadRun,
    _table,
    _target,
    add_fleet_arguments,
    replica_env,
    retag,
    summarize,
)

PREFIX = "catalogbench"
VERSION = "live-a"
NEW_ID_PREFIX = "catbench-new-"
RESULTS = "catalog"
FOLDIN_FILE = "catalog-foldin.json"
FOLDIN_COMMAND = "python -m benchmarks.foldin"
# A new item is a chosen item's vector times NEW_SCALE plus noise of NEW_NOISE x its norm:
# above its original wherever the original scores > 0, and not an exact copy.
NEW_SCALE = 1.05
NEW_NOISE = 0.01
MAX_CANDIDATES = 1000  # the service's default max_candidates (and max_k)
OP_AT_S = 5.0  # each operation starts this long after its load run did (locust is up by then)
TARGET_PROPAGATION_S = 1.0
TARGET_NEW_ITEMS_S = 1.0
TARGET_HEAL_S = 5.0
JSON_HEADERS = {"Content-Type": "application/json"}


def _log(msg: str) -> None:
    print(f"[bench-catalog] {msg}", file=sys.stderr, flush=True)


# --- trace -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TracedAnswer(Answer):
    items: tuple[str, ...] = ()  # the answer's item IDs, best first


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
) -> dict[str, Any]:
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


def failed(answers: Iterable[Answer]) -> int:
    """Answers other than 200 (status 0: no HTTP answer at all)."""
    return sum(1 for a in answers if a.status != 200)


# --- probes ----------------------------------------------------------------------------------
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


# A condition on one round's answers (each probe's item IDs), in probe order.
Condition = Callable[[list[list[str]]], bool]


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


def convergence(rounds: Sequence[Round], since: float) -> dict[str, Any]:
    """When a replica's probe rounds first met the condition, measured from `since`: the end
    of that round (an upper bound: the change was in place by then) and its start (the
    condition did not hold at the end of the round before); rounds after it that failed the
    condition again are relapses."""
    first = next((i for i, r in enumerate(rounds) if r.ok), None)
    spans = [r.end - r.start for r in rounds]
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "round_ms_max": round(max(spans) * 1e3, 1) if spans else None,
        # when polling began: what the lower bound cannot go below
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


def recommend_items(client: httpx.Client, url: str, body: bytes) -> tuple[int, list[str]]:
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
    ) -> list[dict[str, Any]]:
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


def slowest(per_replica: Sequence[dict[str, Any]]) -> float | None:
    """The slowest replica's propagation; None when one never got there."""
    values = [r["propagation_s"] for r in per_replica]
    return None if not values or any(v is None for v in values) else max(values)


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


# --- new items -------------------------------------------------------------------------------
def float_table(bundle_dir: Path) -> tuple[npt.NDArray[np.float32], list[str]]:
    """The bundle's item table as float32 rows (row i is vocab[i]) and its vocabulary."""
    from bundle import decode_items, read_bundle

    b = read_bundle(bundle_dir)
    table = b.pq.decode() if b.pq is not None else decode_items(b.items, b.item_scales)
    return np.asarray(table, dtype=np.float32), list(b.vocab)


def new_vectors(
    table: npt.NDArray[np.float32],
    rows: Sequence[int],
    *,
    scale: float = NEW_SCALE,
    noise: float = NEW_NOISE,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """Row r of `table` times `scale`, plus Gaussian noise of about `noise` x its norm."""
    src = table[np.asarray(rows, dtype=np.int64)]  # (n, dim)
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(src, axis=1, keepdims=True)  # (n, 1)
    e = rng.standard_normal(src.shape) * noise * norms / np.sqrt(src.shape[1])
    out: npt.NDArray[np.float32] = (src * scale + e).astype(np.float32)
    return out


def items_body(ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> bytes:
    return orjson.dumps(
        {
            "items": [
                {"item_id": i, "vector": [round(float(x), 6) for x in v]}
                for i, v in zip(ids, vectors, strict=True)
            ]
        }
    )


# --- fleet -----------------------------------------------------------------------------------
def admin(
    fleet: Fleet, i: int, method: str, path: str, body: Any = None, *, timeout: float = 60
) -> tuple[int, Any, float]:
    """(status, JSON answer or text, seconds of the request) of an admin call to replica i."""
    content = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    with httpx.Client(timeout=timeout) as client:
        t0 = time.perf_counter()
        try:
            r = client.request(
                method,
                fleet.urls[i] + path,
                headers={**fleet.headers, **JSON_HEADERS},
                content=content,
            )
        except httpx.HTTPError as e:
            return 0, f"{type(e).__name__}: {e}", time.perf_counter() - t0
        secs = time.perf_counter() - t0
    try:
        answer: Any = r.json()
    except ValueError:
        answer = r.text[:300]
    return r.status_code, answer, secs


def _call(
    via: str, status: int, answer: Any, secs: float, *, start: float, answered: float
) -> dict[str, Any]:
    """An admin call as the results record it (an error's answer cut to 300 characters)."""
    return {
        "via": via,
        "status": status,
        "seconds": round(secs, 3),
        "answer": answer if status == 200 else str(answer)[:300],
        "start": start,
        "answered": answered,
    }


def start_replica(
    fleet: Fleet,
    work: Path,
    name: str,
    *,
    cpu: str | None,
    bootstrap: Path | None,
    ready_timeout_s: float = 300.0,
) -> Server:
    from benchmarks.serve import server_command

    port = free_port()
    env = replica_env(
        redis_url=fleet.redis.url,
        replica=name,
        port=port,
        token=fleet.token,
        model_dir=work / name / "models",
        bootstrap=bootstrap,
    )
    env["REDIS_KEY_PREFIX"] = PREFIX
    for k in GATE_ENV:  # no uploads here: the service's default (no gates)
        env.pop(k, None)
    server = Server.start(
        server_command(APP, port),
        env=env,
        port=port,
        cpu=cpu,
        log=work / name / "server.log",
        ready_timeout_s=ready_timeout_s,
    )
    fleet.replicas.append(server)
    return server


def start_fleet(work: Path, archive: Path, *, cpu: str | None) -> Fleet:
    """Redis (no persistence), r1 bootstrapped with `archive`, r2 started empty."""
    from tests.factories import RedisServer

    (work / "redis").mkdir(parents=True)
    fleet = Fleet(
        redis=RedisServer(work / "redis").start(), replicas=[], token=secrets.token_hex(16)
    )
    try:
        start_replica(fleet, work, "r1", cpu=cpu, bootstrap=archive)
        start_replica(fleet, work, "r2", cpu=cpu, bootstrap=None)
        if fleet.wait_serving(VERSION, 60) is None:
            raise RuntimeError(f"the fleet does not serve {VERSION}")
    except BaseException:
        fleet.stop()
        raise
    return fleet


# --- load in the background ------------------------------------------------------------------
class ItemLoadRun(LoadRun):
    """`benchmarks.swap`'s background load, its trace also naming each answer's items."""

    def run(self) -> None:
        try:
            self.result = run_locust(
                self.fleet.urls[0],
                offered_rps=self.offered_rps,
                duration_s=self.duration_s,
                workload=self.workload,
                path="/recommend",
                csv_prefix=self.prefix,
                user_rps=self.user_rps,
                cpu=self.cpu,
                extra_env={
                    "LOCUST_HOSTS": ",".join(self.fleet.urls[:2]),
                    "LOCUST_TRACE": str(self.trace_path),
                    "LOCUST_TRACE_ITEMS": "1",
                },
            )
        except BaseException as e:
            self.error = e


def under_load(run: ItemLoadRun, action: Callable[[float], Any]) -> tuple[list[TracedAnswer], Any]:
    """Start `run`, call `action(t0)` (t0: unix time locust was started); the trace and what
    `action` returned."""
    t0 = time.time()
    thread = run.start()
    try:
        out = action(t0)
    finally:
        thread.join()
    if run.error is not None:
        raise run.error
    return read_item_trace(run.trace_path), out


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


# --- phases ----------------------------------------------------------------------------------
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


def unavailable_phase(
    fleet: Fleet, probes: Probes, t0: float, *, duration_s: float, timeout_s: float
) -> dict[str, Any]:
    """Mark the chosen items unavailable (r1) at OP_AT_S; poll every replica until no probe
    names one; mark them available again (r2) 8 s before the run ends; poll until every
    probe names again what it named before."""
    chosen, n = set(probes.items), len(fleet.urls)
    per_replica: list[dict[str, Any]] = []
    restored: list[dict[str, Any]] = []
    with FleetProbe(fleet.urls, probes.bodies) as probe:
        _sleep_until(t0 + OP_AT_S)
        probe.round_all()
        t_call = time.time()
        status, answer, secs = admin(
            fleet, 0, "POST", "/admin/catalog/unavailable", {"item_ids": probes.items}
        )
        t_answer = time.time()
        if status == 200:
            per_replica = probe.poll_fleet(
                [names_none(chosen)] * n, since=t_answer, timeout_s=timeout_s
            )
        listed = admin(fleet, 1, "GET", "/admin/catalog/unavailable")
        catalog = [admin(fleet, i, "GET", "/admin/catalog")[1] for i in range(n)]
        _sleep_until(t0 + duration_s - 8.0)
        probe.round_all()  # the connections went idle meanwhile
        t_restore = time.time()
        r_status, r_answer, r_secs = admin(
            fleet, 1, "POST", "/admin/catalog/available", {"item_ids": probes.items}
        )
        t_restored = time.time()
        if r_status == 200:
            restored = probe.poll_fleet(
                [names_again(base, chosen) for base in probes.baseline],
                since=t_restored,
                timeout_s=timeout_s,
                settle_s=0.0,
            )
    slow = slowest(per_replica)
    return {
        "items": len(probes.items),
        "call": _call("r1", status, answer, secs, start=t_call, answered=t_answer),
        "per_replica": per_replica,
        "unavailable_propagation_s_max": slow,
        # the point from which no answer may name the items: the whole fleet was clean (or
        # gave up: the poll timeout)
        "clean_from": t_answer + (slow if slow is not None else timeout_s),
        "listed": {
            "status": listed[0],
            "count": listed[1].get("count") if isinstance(listed[1], dict) else None,
        },
        "catalog_after": catalog,
        "restore_call": _call(
            "r2", r_status, r_answer, r_secs, start=t_restore, answered=t_restored
        ),
        "restored_per_replica": restored,
        "restored_s_max": slowest(restored),
    }


def unavailable_summary(
    answers: Sequence[TracedAnswer], info: dict[str, Any], items: set[str]
) -> dict[str, Any]:
    """The phase's numbers from its trace: leaks after the fleet was clean, the answers that
    named the items before the call and between the call and the clean point."""
    call = info["call"]
    leaks = count_leaks(
        answers, items, since=info["clean_from"], until=info["restore_call"]["start"]
    )
    before = [a for a in answers if a.start < call["start"]]
    settling = [a for a in answers if call["start"] <= a.start < info["clean_from"]]
    whole = summarize(answers)
    return {
        **{k: v for k, v in info.items() if k not in ("clean_from",)},
        "requests": whole["requests"],
        "failed_requests": failed(answers),
        "statuses": whole["statuses"],
        "p99_ms": whole["p99_ms"],
        "answers_naming_before": len(naming(before, items)),
        "answers_before": len(before),
        "answers_naming_while_propagating": len(naming(settling, items)),
        "unavailable_leaks": leaks["answers"],
        "leaks": leaks,
    }


def new_items_phase(
    fleet: Fleet, body: bytes, new_ids: set[str], probes: Probes, t0: float, *, timeout_s: float
) -> dict[str, Any]:
    """Add the new items to the serving version (through r2) at OP_AT_S; poll every replica
    until one of its probe answers names a new item."""
    per_replica: list[dict[str, Any]] = []
    with FleetProbe(fleet.urls, probes.full) as probe:
        _sleep_until(t0 + OP_AT_S)
        probe.round_all()
        t_call = time.time()
        status, answer, secs = admin(
            fleet, 1, "POST", f"/admin/catalog/items/{VERSION}", body, timeout=120
        )
        t_answer = time.time()
        if status == 200:
            per_replica = probe.poll_fleet(
                [names_any(new_ids)] * len(fleet.urls), since=t_answer, timeout_s=timeout_s
            )
    catalog = [admin(fleet, i, "GET", "/admin/catalog")[1] for i in range(len(fleet.urls))]
    slow = slowest(per_replica)
    return {
        "items": len(new_ids),
        "body_bytes": len(body),
        "call": _call("r2", status, answer, secs, start=t_call, answered=t_answer),
        "per_replica": per_replica,
        "new_items_propagation_s_max": slow,
        "clean_from": t_answer + (slow if slow is not None else timeout_s),
        "catalog_after": catalog,
    }


def new_items_summary(
    answers: Sequence[TracedAnswer], info: dict[str, Any], new_ids: set[str]
) -> dict[str, Any]:
    after = [a for a in answers if a.start >= info["clean_from"]]
    whole = summarize(answers)
    return {
        **{k: v for k, v in info.items() if k != "clean_from"},
        "requests": whole["requests"],
        "failed_requests": failed(answers),
        "statuses": whole["statuses"],
        "p99_ms": whole["p99_ms"],
        "load_answers_naming_new_after": len(naming(after, new_ids)),
        "load_answers_after": len(after),
    }


def fleet_state(fleet: Fleet, rds: Any) -> dict[str, Any]:
    """What Redis holds of the fleet (active version, the bundle archive) and each replica's
    GET /admin/catalog."""
    active = rds.get(f"{PREFIX}:active")
    return {
        "active": active.decode() if isinstance(active, bytes) else active,
        "archive": bool(rds.hexists(f"{PREFIX}:bundle:{VERSION}", "sha256")),
        "keys": sorted(k.decode() for k in rds.keys("*")),  # a private Redis: a few keys
        "catalog": [
            admin(fleet, i, "GET", "/admin/catalog", timeout=5)[1] for i in range(len(fleet.urls))
        ],
    }


def catalog_matches(now: Any, before: Any) -> bool:
    """A replica's GET /admin/catalog shows the fleet's catalog as it was before the flush:
    a fleet revision at least the one before, the same unavailable count and item counts."""
    if not isinstance(now, dict) or not isinstance(before, dict):
        return False
    revision, was = now.get("revision"), before.get("revision")
    return (
        isinstance(revision, int)
        and isinstance(was, int)
        and revision >= was
        and now.get("unavailable") == before.get("unavailable")
        and now.get("items") == before.get("items")
    )


def redis_back(rds: Any, *, since: float, timeout_s: float) -> dict[str, float | None]:
    """Seconds from `since` until Redis holds the active version, and the bundle archive,
    again (polled every 10 ms); and until the fleet lock was first seen taken (a replica
    began writing back: `Registry.heal` holds it; nothing else runs then)."""
    back: dict[str, float | None] = {"active_key": None, "archive": None, "heal_lock": None}
    while time.time() < since + timeout_s and None in (back["active_key"], back["archive"]):
        if back["heal_lock"] is None and rds.exists(f"{PREFIX}:admin-lock"):
            back["heal_lock"] = round(time.time() - since, 3)
        if back["active_key"] is None and rds.get(f"{PREFIX}:active") == VERSION.encode():
            back["active_key"] = round(time.time() - since, 3)
        if back["archive"] is None and rds.hexists(f"{PREFIX}:bundle:{VERSION}", "sha256"):
            back["archive"] = round(time.time() - since, 3)
        time.sleep(0.01)
    return back


def catalog_back(
    fleet: Fleet, i: int, before: Any, *, since: float, timeout_s: float
) -> float | None:
    """Seconds from `since` until replica i's GET /admin/catalog matches `before`."""
    while time.time() < since + timeout_s:
        now = admin(fleet, i, "GET", "/admin/catalog", timeout=5)[1]
        if catalog_matches(now, before):
            return round(time.time() - since, 3)
        time.sleep(0.01)
    return None


def flush_phase(fleet: Fleet, rds: Any, t0: float, *, timeout_s: float) -> dict[str, Any]:
    """FLUSHALL at OP_AT_S; poll Redis (`redis_back`) and every replica's GET /admin/catalog
    (`catalog_back`), each on its own, until the active key, the bundle archive and the
    catalog are all back."""
    before = fleet_state(fleet, rds)
    heals_before = [fleet.status(i).get("heals") for i in range(len(fleet.urls))]
    n = len(fleet.urls)
    _sleep_until(t0 + OP_AT_S)
    with ThreadPoolExecutor(1 + n) as pool:
        t_flush = time.time()
        rds.flushall()
        keys = pool.submit(redis_back, rds, since=t_flush, timeout_s=timeout_s)
        catalogs = [
            pool.submit(
                catalog_back, fleet, i, before["catalog"][i], since=t_flush, timeout_s=timeout_s
            )
            for i in range(n)
        ]
        back: dict[str, Any] = {**keys.result()}
        per_replica = [c.result() for c in catalogs]
    back["catalog"] = None if None in per_replica else max(v for v in per_replica if v is not None)
    back["catalog_per_replica"] = per_replica
    times = [back["active_key"], back["archive"], back["catalog"]]
    return {
        "flushed_at": t_flush,
        "before": before,
        "after": fleet_state(fleet, rds),
        "back_s": back,
        "flush_heal_s": None if None in times else max(times),
        "heals_before": heals_before,
        "heals_after": [fleet.status(i).get("heals") for i in range(n)],
    }


def late_replica(
    fleet: Fleet,
    work: Path,
    probes: Probes,
    new_ids: set[str],
    *,
    cpu: str | None,
    timeout_s: float,
) -> dict[str, Any]:
    """Start r3 with no bootstrap bundle: seconds from its process start until /readyz is 200
    and /admin/status says it serves the fleet's version; its catalog and a new-items probe."""
    t0 = time.time()
    try:
        server = start_replica(
            fleet, work, "r3", cpu=cpu, bootstrap=None, ready_timeout_s=timeout_s
        )
    except ServerError as e:
        return {"late_replica_ready_s": None, "ready_s": None, "error": str(e)[-1500:]}
    ready_s = time.time() - t0
    i = len(fleet.replicas) - 1
    serving_s = None
    while time.time() < t0 + timeout_s:
        if fleet.status(i).get("serving") == VERSION:
            serving_s = time.time() - t0
            break
        time.sleep(0.05)
    with httpx.Client() as client:
        answers = [recommend_items(client, server.url, b)[1] for b in probes.full]
    return {
        "ready_s": round(ready_s, 3),
        "serving_s": None if serving_s is None else round(serving_s, 3),
        "late_replica_ready_s": None if serving_s is None else round(max(ready_s, serving_s), 3),
        "readyz": fleet.readyz(i),
        "status": {
            k: v
            for k, v in fleet.status(i).items()
            if k in ("serving", "catalog_revision", "heals", "standby")
        },
        "catalog": admin(fleet, i, "GET", "/admin/catalog")[1],
        "probe_names_new_items": names_any(new_ids)(answers),
        "rss_mb": server.rss_mb(),
    }


# --- results ---------------------------------------------------------------------------------
FOLDIN_PROVENANCE = ("dataset", "command", "git_commit", "git_dirty", "cpu")


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float)


def _flat(v: Any) -> bool:
    """A plain value or a list of them (an interval)."""
    return _scalar(v) or (isinstance(v, list) and all(map(_scalar, v)))


def foldin_summary(path: Path) -> dict[str, Any] | None:
    """The main numbers of the fold-in result file, with a note naming the command that wrote
    it; None when there is none. Main: its top-level numbers (counts, HR/NDCG@K of fold-in,
    popularity and the bundle alone), their 95% intervals (`*_ci95`), its objects of plain
    values or intervals (the chosen ridge and rank, the paired test, timings) and its
    provenance; not its protocol text, its grid or its bundle record."""
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {
        "note": f"copied from {path.name}, written by `{FOLDIN_COMMAND}` (a separate command; "
        "not measured by this run)",
        "source": str(path),
    }
    for k, v in raw.items():
        number = isinstance(v, int | float) and not isinstance(v, bool)
        interval = k.endswith("_ci95") and isinstance(v, list) and _flat(v)
        plain = isinstance(v, dict) and all(map(_flat, v.values()))
        if k in FOLDIN_PROVENANCE or number or interval or plain:
            out[k] = v
    return out


def foldin_metrics(fold: dict[str, Any]) -> str:
    """The copied metrics (keys with "@", not their intervals) as "ndcg@10 0.0312; ..."."""
    return "; ".join(
        f"{k} {v:.4f}"
        for k, v in fold.items()
        if "@" in k and isinstance(v, int | float) and not isinstance(v, bool)
    )


def evaluate_targets(r: dict[str, Any]) -> dict[str, Any]:
    u, n, f, late = r["unavailable"], r["new_items"], r["flush"], r["late_replica"]
    t = {
        "unavailable_propagation_s": _target(
            u["unavailable_propagation_s_max"],
            TARGET_PROPAGATION_S,
            "<=",
            "admin answer → no probe names an unavailable item, slowest replica",
        ),
        "unavailable_leaks": _target(
            u["unavailable_leaks"],
            0,
            "==",
            "load answers naming an unavailable item, started after the fleet was clean",
        ),
        "unavailable_failed": _target(
            u["failed_requests"], 0, "==", "non-200 answers over the unavailable run"
        ),
        "new_items_propagation_s": _target(
            n["new_items_propagation_s_max"],
            TARGET_NEW_ITEMS_S,
            "<=",
            "admin answer → a probe names a new item, slowest replica",
        ),
        "new_items_failed": _target(
            n["failed_requests"], 0, "==", "non-200 answers over the new-items run"
        ),
        "flush_failed": _target(
            f["flush_failed_requests"], 0, "==", "non-200 answers over the flush run"
        ),
        "flush_heal_s": _target(
            f["flush_heal_s"],
            TARGET_HEAL_S,
            "<=",
            "FLUSHALL → active key, archive and catalog back",
        ),
        "late_replica_ready": _target(
            late.get("late_replica_ready_s") is not None,
            True,
            "==",
            "a replica started after the flush, no bootstrap, became ready on the fleet version",
        ),
    }
    return {"all_passed": all(v["passed"] for v in t.values()), **t}


def _per_replica(rows: Sequence[dict[str, Any]]) -> str:
    """ "r1 0.08-0.18 s, ...": between the start and the end of the first round that showed
    the change (None: never within the timeout)."""
    return (
        ", ".join(
            f"{r['replica']} {r['propagation_lower_s']}-{r['propagation_s']} s"
            if r["propagation_s"] is not None
            else f"{r['replica']} None"
            for r in rows
        )
        or "not polled"
    )


def render_markdown(r: dict[str, Any]) -> str:
    c, u, n, f, late = (
        r["capacity"],
        r["unavailable"],
        r["new_items"],
        r["flush"],
        r["late_replica"],
    )
    w = r["warmup"]
    out = [
        "# Live-catalog benchmark: unavailable items, new items, a flushed Redis",
        "",
        f"Command: `{r['command']}`  ",
        f"Commit `{r['git_commit']}`"
        + (" (uncommitted changes)" if r["git_dirty"] else "")
        + f"; CPU {r['cpu']} ({r['cpu_count']} cores); wall time {r['wall_seconds']:.0f} s  ",
        f"Bundle: {r['bundle']['source']} ({r['bundle']['items']} items), served as "
        f"`{VERSION}`. Two replicas pinned to core {r['pinning']['replicas']} sharing one "
        f"Redis; locust on core {r['pinning']['locust']}, round-robin over the replicas. "
        "Propagation: from the admin call's answer to a replica's first round of direct "
        "probes that showed the change, given as its start-end (the target uses the end).",
        "",
        f"Capacity probe: {c['achieved_rps']:.0f} rps achieved at {c['offered_rps']:.0f} offered"
        + (" (locust's core was the limit)" if c.get("locust_limited") else "")
        + f"; load for the runs below: {r['load_rps']:.0f} rps ({r['load_fraction']:.0%}).",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| warm-up: answers naming one of the {u['items']:,} chosen items | "
        f"{w['answers_naming_chosen']:,} of {w['answers']:,} |",
        f"| unavailable: admin call (r1) | {u['call']['status']}, {u['call']['seconds']} s |",
        f"| unavailable: propagation per replica | {_per_replica(u['per_replica'])} |",
        f"| unavailable: answers naming them before the call / while propagating | "
        f"{u['answers_naming_before']:,} / {u['answers_naming_while_propagating']:,} |",
        f"| unavailable: leaks (answers after the fleet was clean, {u['leaks']['window_s']} s, "
        f"{u['leaks']['answers_in_window']:,} answers) | {u['unavailable_leaks']} |",
        f"| unavailable run: requests / failed | {u['requests']:,} / {u['failed_requests']} |",
        f"| available again (r2): slowest replica showing them again | {u['restored_s_max']} s |",
        f"| new items: admin call (r2, {n['body_bytes']:,} bytes) | {n['call']['status']}, "
        f"{n['call']['seconds']} s |",
        f"| new items: propagation per replica | {_per_replica(n['per_replica'])} |",
        f"| new items: load answers naming one, after propagation | "
        f"{n['load_answers_naming_new_after']:,} of {n['load_answers_after']:,} |",
        f"| new-items run: requests / failed | {n['requests']:,} / {n['failed_requests']} |",
        f"| flush run: requests / failed | {f['requests']:,} / {f['flush_failed_requests']} |",
        f"| flush: fleet lock taken (write-back began) / active key / archive / catalog back "
        f"| {f['back_s'].get('heal_lock')} / {f['back_s']['active_key']} / "
        f"{f['back_s']['archive']} / {f['back_s']['catalog']} s |",
        "| flush: heals per replica (before → after) | "
        + ", ".join(
            f"r{i + 1} {a} → {b}"
            for i, (a, b) in enumerate(zip(f["heals_before"], f["heals_after"], strict=True))
        )
        + " |",
        f"| late replica (no bootstrap): /readyz 200 / serving `{VERSION}` | "
        f"{late.get('ready_s')} / {late.get('serving_s')} s |",
        f"| late replica: probe names a new item | {late.get('probe_names_new_items')} |",
    ]
    fold = r.get("foldin")
    if fold:
        out.append(f"| fold-in ({fold['note']}) | {foldin_metrics(fold) or 'no metrics'} |")
    out += ["", "## Targets", ""]
    rows = []
    for key, v in r["targets"].items():
        if key == "all_passed":
            continue
        rows.append(
            [
                key,
                v["what"],
                str(v["value"]),
                f"{v['op']} {v['threshold']}",
                "PASS" if v["passed"] else "**FAIL**",
            ]
        )
    out += _table(["target", "measured as", "value", "required", "result"], rows)
    out += ["", f"All targets: {'PASS' if r['targets']['all_passed'] else 'FAIL'}.", ""]
    return "\n".join(out)


# --- command line ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.catalog_live", description=__doc__.split("\n")[0]
    )
    add_fleet_arguments(p, bundle_help="bundle dir to serve (default: as bench-swap)")
    a = p.add_argument
    a("--warmup", type=float, default=10.0, help="seconds of the traced warm-up")
    a("--items", type=int, default=1000, help="items made unavailable, and items added")
    a("--probe-bodies", type=int, default=4, help="full-catalog probe bodies per round")
    a("--unavailable-run", type=float, default=40.0, help="seconds of the unavailable run")
    a("--new-items-run", type=float, default=20.0, help="seconds of the new-items run")
    a("--flush-run", type=float, default=30.0, help="seconds of the flush run")
    a("--timeout", type=float, default=10.0, help="seconds to wait for a change to propagate")
    return p


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


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures issue 20 names, at the top level of catalog.json (the phases below hold
    them too, with their context)."""
    u, n, f = results["unavailable"], results["new_items"], results["flush"]
    return {
        "unavailable_propagation_s_max": u["unavailable_propagation_s_max"],
        "unavailable_leaks": u["unavailable_leaks"],
        "failed_requests": u["failed_requests"] + n["failed_requests"],
        "new_items_propagation_s_max": n["new_items_propagation_s_max"],
        "flush_failed_requests": f["flush_failed_requests"],
        "flush_heal_s": f["flush_heal_s"],
        "late_replica_ready_s": results["late_replica"].get("late_replica_ready_s"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    import redis

    from benchmarks.serve import resolve_inputs
    from benchmarks.workload import WorkloadConfig, build_workload, histories_from_data, read_vocab
    from bundle import pack_bundle

    work: Path = args.work / "catalog-live"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    host = host_info(pinned([], args.server_cpu))
    data, shipped, provenance = resolve_inputs(args.data, args.bundle, args.work)
    bundle_dir = retag(shipped, work / "bundles" / VERSION, VERSION)
    archive = work / "bundles" / f"{VERSION}.tar.gz"
    pack_bundle(bundle_dir, archive)
    vocab = read_vocab(shipped / "vocab.json")
    histories = histories_from_data(data, vocab=vocab) if data is not None else None
    workload = build_workload(vocab, histories, WorkloadConfig(), source=str(data))
    workload_path = workload.save(work / "workload.json")
    table, table_vocab = float_table(bundle_dir)
    row_of = {v: r for r, v in enumerate(table_vocab) if v}
    _log(f"bundle {shipped} ({len(vocab)} items); starting Redis and two replicas")
    fleet = start_fleet(work, archive, cpu=args.server_cpu)
    rds = redis.Redis.from_url(fleet.redis.url)

    def load(name: str, rps: float, seconds: float) -> ItemLoadRun:
        return ItemLoadRun(
            fleet, workload_path, rps, seconds, args.user_rps, args.load_cpu, work / "locust" / name
        )

    try:
        # 1. capacity, as benchmarks.swap measures it (its trace without item IDs)
        probe_run = LoadRun(
            fleet,
            workload_path,
            args.probe_rps,
            args.probe,
            args.user_rps,
            args.load_cpu,
            work / "locust" / "capacity",
        )
        thread = probe_run.start()
        thread.join()
        if probe_run.error is not None:
            raise probe_run.error
        capacity = {
            "offered_rps": args.probe_rps,
            "achieved_rps": probe_run.result["rps"],
            "p99_ms": probe_run.result["p99_ms"],
            "locust_limited": probe_run.result["locust_limited"],
            "locust_cpu": probe_run.result["locust_cpu"],
            "failed": probe_run.result["failed_requests"],
        }
        rps = round(args.load * float(probe_run.result["rps"]), 1)
        _log(f"capacity {probe_run.result['rps']} rps; load {rps} rps")

        warm, _ = under_load(load("warmup", rps, args.warmup), lambda t0: None)
        probes = choose_probes(
            fleet,
            workload.full,
            warm,
            n_items=args.items,
            n_bodies=args.probe_bodies,
            catalog=[v for v in table_vocab if v],
        )
        chosen = set(probes.items)
        warmup = {
            **summarize(warm),
            "answers": sum(1 for a in warm if a.status == 200),
            "answers_naming_chosen": len(naming(warm, chosen)),
            "chosen_named_by_warmup": sum(1 for i in probes.items if i in item_counts(warm)),
            "probe_full_bodies": len(probes.full),
            "probe_full_bodies_name": probes.full_named,
            "probe_rerank_bodies": len(probes.rerank),
        }
        _log(
            f"warm-up: {warmup['answers_naming_chosen']} of {warmup['answers']} answers name "
            f"the {len(chosen)} chosen items; {len(probes.full)} full probes name "
            f"{probes.full_named} of them"
        )

        # 2. unavailable
        u_answers, u_info = under_load(
            load("unavailable", rps, args.unavailable_run),
            lambda t0: unavailable_phase(
                fleet, probes, t0, duration_s=args.unavailable_run, timeout_s=args.timeout
            ),
        )
        unavailable = unavailable_summary(u_answers, u_info, chosen)
        _log(
            f"unavailable: propagation {unavailable['unavailable_propagation_s_max']} s, "
            f"leaks {unavailable['unavailable_leaks']}, failed "
            f"{unavailable['failed_requests']}"
        )

        # 3. new items: copies of the chosen items, which the probes' answers named
        new_ids = [f"{NEW_ID_PREFIX}{j + 1}" for j in range(len(probes.items))]
        if not set(new_ids).isdisjoint(row_of):
            raise RuntimeError(f"new IDs {NEW_ID_PREFIX}* collide with the catalog")
        vectors = new_vectors(table, [row_of[i] for i in probes.items])
        body = items_body(new_ids, vectors)
        n_answers, n_info = under_load(
            load("new-items", rps, args.new_items_run),
            lambda t0: new_items_phase(
                fleet, body, set(new_ids), probes, t0, timeout_s=args.timeout
            ),
        )
        new_items = new_items_summary(n_answers, n_info, set(new_ids))
        _log(
            f"new items: {new_items['call']['status']}, propagation "
            f"{new_items['new_items_propagation_s_max']} s, failed "
            f"{new_items['failed_requests']}"
        )

        # 4. flush, then a replica started afterwards
        f_answers, f_info = under_load(
            load("flush", rps, args.flush_run),
            lambda t0: flush_phase(fleet, rds, t0, timeout_s=args.flush_run - OP_AT_S),
        )
        flush = {
            **f_info,
            **{
                k: v
                for k, v in summarize(f_answers).items()
                if k in ("requests", "statuses", "p99_ms", "max_ms")
            },
            "flush_failed_requests": failed(f_answers),
        }
        _log(f"flush: heal {flush['flush_heal_s']} s, failed {flush['flush_failed_requests']}")
        late = late_replica(fleet, work, probes, set(new_ids), cpu=args.server_cpu, timeout_s=120.0)
        _log(f"late replica: ready {late.get('late_replica_ready_s')} s")
    finally:
        rds.close()
        fleet.stop()
    host["python_probe_ms"]["end"] = python_probe_ms(pinned([], args.server_cpu))

    dirty = git("status", "--porcelain")
    results: dict[str, Any] = {
        "command": shlex.join([python_exe(), "-m", "benchmarks.catalog_live", *argv]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": host,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "bundle": {
            "source": provenance.get("bundle_source"),
            "dir": str(shipped),
            "items": len(vocab),
            "version": VERSION,
        },
        "pinning": {"replicas": args.server_cpu, "locust": args.load_cpu},
        "capacity": capacity,
        "load_fraction": args.load,
        "load_rps": rps,
        "durations_s": {
            "capacity": args.probe,
            "warmup": args.warmup,
            "unavailable": args.unavailable_run,
            "new_items": args.new_items_run,
            "flush": args.flush_run,
            "operation_at": OP_AT_S,
            "propagation_timeout": args.timeout,
        },
        "warmup": warmup,
        "new_item_vectors": f"chosen item's decoded vector x {NEW_SCALE} + Gaussian noise of "
        f"{NEW_NOISE} x its norm; IDs {NEW_ID_PREFIX}1..{len(new_ids)}",
        "unavailable": unavailable,
        "new_items": new_items,
        "flush": flush,
        "late_replica": late,
        "foldin": foldin_summary(args.out / FOLDIN_FILE),
    }
    results["targets"] = evaluate_targets(results)
    results = {**headline(results), **results}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULTS}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = render_markdown(results)
    (out / f"{RESULTS}.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    _log(
        f"wrote {out / (RESULTS + '.json')}; targets "
        f"{'PASS' if results['targets']['all_passed'] else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
