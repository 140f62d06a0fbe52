"""The live-catalog benchmark's fleet and its first phases (`benchmarks.catalog_live`):
items made unavailable under load, and new items added under load.

    fleet = start_fleet(work, archive, cpu="0")
    info = during_load(run, lambda t0: unavailable_phase(fleet, probes, t0, ...))
    unavailable_summary(read_item_trace(run.trace_path), info, set(probes.items))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import orjson

from benchmarks.catalog_probes import (
    FleetProbe,
    Probes,
    ReplicaConvergence,
    names_again,
    names_any,
    names_none,
    slowest,
)
from benchmarks.catalog_trace import Leaks, TracedAnswer, count_leaks, naming
from benchmarks.harness.fleet import Fleet
from benchmarks.harness.trace import failed, summarize

PREFIX = "catalogbench"
VERSION = "live-a"
NEW_ID_PREFIX = "catbench-new-"
# A new item is a chosen item's vector times NEW_SCALE plus noise of NEW_NOISE x its norm:
# above its original wherever the original scores > 0, and not an exact copy.
NEW_SCALE = 1.05
NEW_NOISE = 0.01
OP_AT_S = 5.0  # each operation starts this long after its load run did (locust is up by then)
RESTORE_BEFORE_END_S = 8.0  # the unavailable items come back this long before the run ends


class AdminCall(TypedDict):
    """An admin call as the results record it (an error's answer cut to 300 characters)."""

    via: str  # the replica it was sent to
    status: int
    seconds: float
    answer: Any
    start: float  # unix seconds
    answered: float


class Listed(TypedDict):
    status: int
    count: int | None  # items the fleet lists as unavailable


class LoadFigures(TypedDict):
    """A phase's load run: requests, failures, statuses and p99."""

    requests: int
    failed_requests: int
    statuses: dict[str, int]
    p99_ms: float | None


class UnavailableCalls(TypedDict):
    """The unavailable phase's admin calls and how fast every replica followed them."""

    items: int
    call: AdminCall
    per_replica: list[ReplicaConvergence]
    unavailable_propagation_s_max: float | None
    listed: Listed
    catalog_after: list[Any]  # every replica's GET /admin/catalog
    restore_call: AdminCall
    restored_per_replica: list[ReplicaConvergence]
    restored_s_max: float | None


class Unavailable(UnavailableCalls, LoadFigures):
    answers_naming_before: int
    answers_before: int
    answers_naming_while_propagating: int
    unavailable_leaks: int
    leaks: Leaks


class NewItemsCall(TypedDict):
    items: int
    body_bytes: int
    call: AdminCall
    per_replica: list[ReplicaConvergence]
    new_items_propagation_s_max: float | None
    catalog_after: list[Any]


class NewItems(NewItemsCall, LoadFigures):
    load_answers_naming_new_after: int
    load_answers_after: int


def start_fleet(work: Path, archive: Path, *, cpu: str | None) -> Fleet:
    """Redis (no persistence: a FLUSHALL is the state vanishing), r1 bootstrapped with
    `archive`, r2 started empty; no validation gates (nothing is uploaded)."""
    fleet = Fleet.start(work, prefix=PREFIX, gates={})
    try:
        fleet.start_replica(work, "r1", cpu=cpu, bootstrap=archive)
        fleet.start_replica(work, "r2", cpu=cpu, bootstrap=None)
        if fleet.wait_serving(VERSION, 60) is None:
            raise RuntimeError(f"the fleet does not serve {VERSION}")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def timed_admin(
    fleet: Fleet, i: int, method: str, path: str, body: Any = None, *, timeout: float = 60
) -> AdminCall:
    """An admin call to replica i, with when it was made and when it was answered."""
    start = time.time()
    status, answer, secs = fleet.admin(i, method, path, body, timeout=timeout)
    return {
        "via": f"r{i + 1}",
        "status": status,
        "seconds": round(secs, 3),
        "answer": answer if status == 200 else str(answer)[:300],
        "start": start,
        "answered": time.time(),
    }


def catalogs(fleet: Fleet, *, timeout: float = 60) -> list[Any]:
    """Every replica's GET /admin/catalog."""
    return [
        fleet.admin(i, "GET", "/admin/catalog", timeout=timeout)[1] for i in range(len(fleet.urls))
    ]


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


# --- unavailable items -----------------------------------------------------------------------
def _mark_unavailable(
    fleet: Fleet, probe: FleetProbe, probes: Probes, *, timeout_s: float
) -> tuple[AdminCall, list[ReplicaConvergence]]:
    """POST the chosen items unavailable through r1; poll every replica until no probe
    names one."""
    probe.round_all()
    call = timed_admin(fleet, 0, "POST", "/admin/catalog/unavailable", {"item_ids": probes.items})
    if call["status"] != 200:
        return call, []
    n = len(fleet.urls)
    conditions = [names_none(set(probes.items))] * n
    return call, probe.poll_fleet(conditions, since=call["answered"], timeout_s=timeout_s)


def _mark_available(
    fleet: Fleet, probe: FleetProbe, probes: Probes, *, timeout_s: float
) -> tuple[AdminCall, list[ReplicaConvergence]]:
    """POST them available again through r2; poll until every probe names again what it
    named before."""
    probe.round_all()  # the connections went idle meanwhile
    call = timed_admin(fleet, 1, "POST", "/admin/catalog/available", {"item_ids": probes.items})
    if call["status"] != 200:
        return call, []
    conditions = [names_again(base, set(probes.items)) for base in probes.baseline]
    rows = probe.poll_fleet(conditions, since=call["answered"], timeout_s=timeout_s, settle_s=0.0)
    return call, rows


def unavailable_phase(
    fleet: Fleet, probes: Probes, t0: float, *, duration_s: float, timeout_s: float
) -> tuple[UnavailableCalls, float]:
    """Mark the chosen items unavailable (r1) at OP_AT_S; poll every replica until no probe
    names one; mark them available again (r2) 8 s before the run ends; poll until every
    probe names again what it named before. Also the point from which no answer may name
    the items: the whole fleet was clean (or the poll gave up)."""
    with FleetProbe(fleet.urls, probes.bodies) as probe:
        sleep_until(t0 + OP_AT_S)
        call, per_replica = _mark_unavailable(fleet, probe, probes, timeout_s=timeout_s)
        listed = fleet.admin(1, "GET", "/admin/catalog/unavailable")
        catalog = catalogs(fleet)
        sleep_until(t0 + duration_s - RESTORE_BEFORE_END_S)
        restore, restored = _mark_available(fleet, probe, probes, timeout_s=timeout_s)
    slow = slowest(per_replica)
    calls: UnavailableCalls = {
        "items": len(probes.items),
        "call": call,
        "per_replica": per_replica,
        "unavailable_propagation_s_max": slow,
        "listed": {
            "status": listed[0],
            "count": listed[1].get("count") if isinstance(listed[1], dict) else None,
        },
        "catalog_after": catalog,
        "restore_call": restore,
        "restored_per_replica": restored,
        "restored_s_max": slowest(restored),
    }
    return calls, call["answered"] + (slow if slow is not None else timeout_s)


def _load_figures(answers: Sequence[TracedAnswer]) -> LoadFigures:
    """Requests, failures, statuses and p99 of a phase's load run."""
    whole = summarize(answers)
    return {
        "requests": whole["requests"],
        "failed_requests": failed(answers),
        "statuses": whole["statuses"],
        "p99_ms": whole["p99_ms"],
    }


def unavailable_summary(
    answers: Sequence[TracedAnswer], phase: tuple[UnavailableCalls, float], items: set[str]
) -> Unavailable:
    """The phase's numbers from its trace: leaks after the fleet was clean, the answers that
    named the items before the call and between the call and the clean point."""
    info, clean_from = phase
    call = info["call"]
    leaks = count_leaks(answers, items, since=clean_from, until=info["restore_call"]["start"])
    before = [a for a in answers if a.start < call["start"]]
    settling = [a for a in answers if call["start"] <= a.start < clean_from]
    return {
        **info,
        **_load_figures(answers),
        "answers_naming_before": len(naming(before, items)),
        "answers_before": len(before),
        "answers_naming_while_propagating": len(naming(settling, items)),
        "unavailable_leaks": leaks["answers"],
        "leaks": leaks,
    }


# --- new items -------------------------------------------------------------------------------
def new_items_phase(
    fleet: Fleet, body: bytes, new_ids: set[str], probes: Probes, t0: float, *, timeout_s: float
) -> tuple[NewItemsCall, float]:
    """Add the new items to the serving version (through r2) at OP_AT_S; poll every replica
    until one of its probe answers names a new item. Also the point from which every
    replica showed them (or the poll gave up)."""
    per_replica: list[ReplicaConvergence] = []
    with FleetProbe(fleet.urls, probes.full) as probe:
        sleep_until(t0 + OP_AT_S)
        probe.round_all()
        call = timed_admin(fleet, 1, "POST", f"/admin/catalog/items/{VERSION}", body, timeout=120)
        if call["status"] == 200:
            conditions = [names_any(new_ids)] * len(fleet.urls)
            per_replica = probe.poll_fleet(conditions, since=call["answered"], timeout_s=timeout_s)
    slow = slowest(per_replica)
    info: NewItemsCall = {
        "items": len(new_ids),
        "body_bytes": len(body),
        "call": call,
        "per_replica": per_replica,
        "new_items_propagation_s_max": slow,
        "catalog_after": catalogs(fleet),
    }
    return info, call["answered"] + (slow if slow is not None else timeout_s)


def new_items_summary(
    answers: Sequence[TracedAnswer], phase: tuple[NewItemsCall, float], new_ids: set[str]
) -> NewItems:
    info, clean_from = phase
    after = [a for a in answers if a.start >= clean_from]
    return {
        **info,
        **_load_figures(answers),
        "load_answers_naming_new_after": len(naming(after, new_ids)),
        "load_answers_after": len(after),
    }
