"""The live-catalog benchmark's last phases (`benchmarks.catalog_live`): Redis flushed under
load until the fleet has written its state back, then a replica started with no bootstrap
bundle.

    info = during_load(run, lambda t0: flush_phase(fleet, rds, t0, timeout_s=25.0))
    late_replica(fleet, work, probes, new_ids, cpu="0", timeout_s=120.0)["late_replica_ready_s"]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import httpx
import redis

from benchmarks.catalog_phases import OP_AT_S, PREFIX, VERSION, catalogs, sleep_until
from benchmarks.catalog_probes import Probes, names_any, recommend_items
from benchmarks.harness.fleet import Fleet
from benchmarks.harness.servers import ServerError

POLL_S = 0.01  # how often Redis and the replicas are asked whether the state is back
LATE_STATUS = ("serving", "catalog_revision", "heals", "standby")


class FleetState(TypedDict):
    active: str | None  # the active version Redis names
    archive: bool  # Redis holds the active version's bundle archive
    keys: list[str]
    catalog: list[Any]  # every replica's GET /admin/catalog


class FlushPhase(TypedDict):
    flushed_at: float  # unix seconds
    before: FleetState
    after: FleetState
    back_s: dict[str, Any]  # seconds from the flush until each part was back (`redis_back`)
    flush_heal_s: float | None  # until all of them were
    heals_before: list[int | None]  # every replica's heal count
    heals_after: list[int | None]


class LateReplica(TypedDict, total=False):
    """The replica started after the flush; `error` (and no more) when it never got ready."""

    ready_s: float | None
    serving_s: float | None
    late_replica_ready_s: float | None
    readyz: str
    status: dict[str, Any]
    catalog: Any
    probe_names_new_items: bool
    rss_mb: float | None
    error: str


def fleet_state(fleet: Fleet, rds: redis.Redis) -> FleetState:
    """What Redis holds of the fleet (active version, the bundle archive) and each replica's
    GET /admin/catalog."""
    active = rds.get(f"{PREFIX}:active")
    return {
        "active": active.decode() if isinstance(active, bytes) else active,
        "archive": bool(rds.hexists(f"{PREFIX}:bundle:{VERSION}", "sha256")),
        # KEYS is fine here: a private Redis holding a few keys
        "keys": sorted(k.decode() if isinstance(k, bytes) else k for k in rds.keys("*")),
        "catalog": catalogs(fleet, timeout=5),
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


def redis_back(rds: redis.Redis, *, since: float, timeout_s: float) -> dict[str, float | None]:
    """Seconds from `since` until Redis holds the active version, and the bundle archive,
    again; and until the fleet lock was first seen taken (a replica began writing back:
    `Registry.heal` holds it; nothing else runs then)."""
    back: dict[str, float | None] = {"active_key": None, "archive": None, "heal_lock": None}
    while time.time() < since + timeout_s and None in (back["active_key"], back["archive"]):
        if back["heal_lock"] is None and rds.exists(f"{PREFIX}:admin-lock"):
            back["heal_lock"] = round(time.time() - since, 3)
        if back["active_key"] is None and rds.get(f"{PREFIX}:active") == VERSION.encode():
            back["active_key"] = round(time.time() - since, 3)
        if back["archive"] is None and rds.hexists(f"{PREFIX}:bundle:{VERSION}", "sha256"):
            back["archive"] = round(time.time() - since, 3)
        time.sleep(POLL_S)
    return back


def catalog_back(
    fleet: Fleet, i: int, before: Any, *, since: float, timeout_s: float
) -> float | None:
    """Seconds from `since` until replica i's GET /admin/catalog matches `before`."""
    while time.time() < since + timeout_s:
        now = fleet.admin(i, "GET", "/admin/catalog", timeout=5)[1]
        if catalog_matches(now, before):
            return round(time.time() - since, 3)
        time.sleep(POLL_S)
    return None


def _flush_and_wait(
    fleet: Fleet, rds: redis.Redis, before: Sequence[Any], *, timeout_s: float
) -> tuple[float, dict[str, Any]]:
    """FLUSHALL, then Redis and every replica polled on their own until each is back; the
    flush's time and the seconds each took (`catalog`: the slowest replica)."""
    n = len(fleet.urls)
    with ThreadPoolExecutor(1 + n) as pool:
        t_flush = time.time()
        rds.flushall()
        keys = pool.submit(redis_back, rds, since=t_flush, timeout_s=timeout_s)
        replicas = [
            pool.submit(catalog_back, fleet, i, before[i], since=t_flush, timeout_s=timeout_s)
            for i in range(n)
        ]
        back: dict[str, Any] = {**keys.result()}
        per_replica = [c.result() for c in replicas]
    back["catalog"] = None if None in per_replica else max(v for v in per_replica if v is not None)
    back["catalog_per_replica"] = per_replica
    return t_flush, back


def flush_phase(fleet: Fleet, rds: redis.Redis, t0: float, *, timeout_s: float) -> FlushPhase:
    """FLUSHALL at OP_AT_S; poll Redis (`redis_back`) and every replica's GET /admin/catalog
    (`catalog_back`), each on its own, until the active key, the bundle archive and the
    catalog are all back."""
    before = fleet_state(fleet, rds)
    n = len(fleet.urls)
    heals_before = [fleet.status(i).get("heals") for i in range(n)]
    sleep_until(t0 + OP_AT_S)
    t_flush, back = _flush_and_wait(fleet, rds, before["catalog"], timeout_s=timeout_s)
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


def _serving_s(fleet: Fleet, i: int, t0: float, timeout_s: float) -> float | None:
    """Seconds from `t0` until replica i's /admin/status says it serves the fleet's version."""
    while time.time() < t0 + timeout_s:
        if fleet.status(i).get("serving") == VERSION:
            return time.time() - t0
        time.sleep(0.05)
    return None


def late_replica(
    fleet: Fleet,
    work: Path,
    probes: Probes,
    new_ids: set[str],
    *,
    cpu: str | None,
    timeout_s: float,
) -> LateReplica:
    """Start r3 with no bootstrap bundle: seconds from its process start until /readyz is 200
    and /admin/status says it serves the fleet's version; its catalog and a new-items probe."""
    t0 = time.time()
    try:
        server = fleet.start_replica(work, "r3", cpu=cpu, bootstrap=None, ready_timeout_s=timeout_s)
    except ServerError as e:
        return {"late_replica_ready_s": None, "ready_s": None, "error": str(e)[-1500:]}
    ready_s = time.time() - t0
    i = len(fleet.replicas) - 1
    serving_s = _serving_s(fleet, i, t0, timeout_s)
    with httpx.Client() as client:
        answers = [recommend_items(client, server.url, b)[1] for b in probes.full]
    readyz, status = fleet.readyz(i), fleet.status(i)
    return {
        "ready_s": round(ready_s, 3),
        "serving_s": None if serving_s is None else round(serving_s, 3),
        "late_replica_ready_s": None if serving_s is None else round(max(ready_s, serving_s), 3),
        "readyz": readyz,
        "status": {k: v for k, v in status.items() if k in LATE_STATUS},
        "catalog": fleet.admin(i, "GET", "/admin/catalog")[1],
        "probe_names_new_items": names_any(new_ids)(answers),
        "rss_mb": server.rss_mb(),
    }
