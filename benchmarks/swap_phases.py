"""The swap benchmark's fleet and its phases (`benchmarks.swap`): swaps under load, swap
cycles without load, Redis stopped under load.

    fleet = start_fleet(work, archives, cpu="0")
    swaps = during_load(run, lambda t0: swap_phase(fleet, 20, 60.0, t0))
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import TypedDict

from benchmarks.harness.fleet import Fleet
from benchmarks.harness.log import logger

PREFIX = "swapbench"
VERSIONS = ("swap-a", "swap-b")
# The memory phase rotates through three versions: each replica keeps the previous version
# loaded (its standby), so with two every activation after the first would be a reference
# swap; with three, every activation loads its version from disk.
MEMORY_VERSIONS = (*VERSIONS, "swap-c")
# Gates on while the corpus runs (so each gate has a case): generous, so valid swaps pass.
GATE_ENV = {"GATE_MAX_NDCG_DROP": "0.05", "GATE_MAX_LATENCY_MS": "50"}
SWAPS_FROM_S = 5.0  # the swaps spread over the run but its first and last this many seconds

log = logger("bench-swap")


class SwapRecord(TypedDict):
    """One activation of the swap phase."""

    i: int
    version: str
    via: str  # the replica it was sent to
    warm: bool  # every replica held the version loaded already
    status: int
    body: str  # the answer, when it was not 200
    start: float  # unix seconds of the call
    activate_s: float  # the call's own time
    fleet_s: float | None  # call to the whole fleet serving it; None: not within FLEET_WAIT_S


class CyclePoint(TypedDict):
    """Both replicas' resident size after a swap cycle, and its slowest activation."""

    cycle: int
    rss_mb: list[float | None]
    fleet_s: float | None


class Outage(TypedDict):
    stopped_at_s: float  # into the run
    down_s: float
    readyz_during_outage: list[list[str]]  # per replica, every /readyz status seen
    recovered_s: float | None  # restart to every replica ready and subscribed again


def start_fleet(work: Path, archives: dict[str, Path], *, cpu: str | None) -> Fleet:
    """Redis (saving to disk), replica r1 bootstrapped with swap-a (which it shares through
    Redis), replica r2 started empty (it follows the fleet), then swap-c and swap-b uploaded
    through r1's admin API."""
    fleet = Fleet.start(work, prefix=PREFIX, gates=GATE_ENV, persist=True)
    try:
        fleet.start_replica(work, "r1", cpu=cpu, bootstrap=archives[VERSIONS[0]])
        fleet.start_replica(work, "r2", cpu=cpu, bootstrap=None)
        # swap-b last: as in an operator's upload-then-activate, the swap phase's first
        # activation (of swap-b, through r1) finds it loaded by the upload's validation.
        for version in reversed(MEMORY_VERSIONS[1:]):
            fleet.upload(0, archives[version])
        if fleet.wait_serving(VERSIONS[0], 30) is None:
            raise RuntimeError(f"the fleet does not serve {VERSIONS[0]}")
        if fleet.wait_prepared(VERSIONS[1], 120) is None:
            raise RuntimeError(f"the fleet did not load the upload of {VERSIONS[1]} ahead")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def _swap(fleet: Fleet, i: int) -> SwapRecord:
    """Activation i: the other version, through replica i % 2; waits for the whole fleet."""
    version, replica = VERSIONS[(i + 1) % 2], i % 2
    # Warm: every replica holds the version loaded already (service.registry: the standby,
    # or prepared: uploaded or announced).
    warm = all(
        version in (st["standby"], st["prepared"])
        for st in (fleet.status(r) for r in range(len(fleet.replicas)))
    )
    t_call = time.time()
    status, body = fleet.activate(replica, version)
    t_answer = time.time()
    fleet_s = fleet.wait_serving(version) if status == 200 else None
    return {
        "i": i,
        "version": version,
        "via": f"r{replica + 1}",
        "warm": warm,
        "status": status,
        "body": body if status != 200 else "",
        "start": t_call,
        "activate_s": round(t_answer - t_call, 3),
        "fleet_s": None if fleet_s is None else round(t_answer - t_call + fleet_s, 3),
    }


def swap_phase(fleet: Fleet, n_swaps: int, duration_s: float, t0: float) -> list[SwapRecord]:
    """`n_swaps` activations spread over the middle of the run, alternating version and
    replica; each waits for the whole fleet to serve the new version."""
    spacing = (duration_s - 2 * SWAPS_FROM_S) / max(n_swaps, 1)
    swaps = []
    for i in range(n_swaps):
        time.sleep(max(0.0, t0 + SWAPS_FROM_S + i * spacing - time.time()))
        s = _swap(fleet, i)
        swaps.append(s)
        log(
            f"swap {i + 1}/{n_swaps} to {s['version']} ({'warm' if s['warm'] else 'cold'}) "
            f"via {s['via']}: {s['status']}, {s['activate_s']:.2f} s, whole fleet {s['fleet_s']} s"
        )
    return swaps


def memory_phase(fleet: Fleet, cycles: int) -> list[CyclePoint]:
    """`cycles` × 2 activations through r1, rotating swap-b, swap-c, swap-a, ... (each one a
    load from disk on every replica); both replicas' RSS and the slowest activation (call
    to whole fleet serving, s) after each cycle."""
    curve: list[CyclePoint] = [
        {"cycle": 0, "rss_mb": [r.rss_mb() for r in fleet.replicas], "fleet_s": None}
    ]
    rotation = itertools.cycle(MEMORY_VERSIONS[1:] + MEMORY_VERSIONS[:1])
    for c in range(1, cycles + 1):
        slowest = 0.0
        for version in (next(rotation), next(rotation)):
            t_call = time.monotonic()
            status, body = fleet.activate(0, version)
            if status != 200 or fleet.wait_serving(version) is None:
                raise RuntimeError(f"cycle {c}: activating {version} gave {status}: {body}")
            slowest = max(slowest, time.monotonic() - t_call)
        rss = [r.rss_mb() for r in fleet.replicas]
        curve.append({"cycle": c, "rss_mb": rss, "fleet_s": slowest})
        if c % 10 == 0:
            log(f"memory: cycle {c}/{cycles}, RSS {rss} MiB")
    return curve


def _recovered_s(fleet: Fleet, restarted: float, timeout_s: float = 30.0) -> float | None:
    """Seconds from `restarted` until every replica is ready and subscribed again."""
    while time.time() < restarted + timeout_s:
        if all(
            fleet.readyz(i) == "ready" and fleet.status(i).get("subscriber_connected")
            for i in range(len(fleet.replicas))
        ):
            return round(time.time() - restarted, 2)
        time.sleep(0.1)
    return None


def outage_phase(fleet: Fleet, t0: float, at_s: float, outage_s: float) -> Outage:
    """Stop Redis at `at_s` for `outage_s`; poll /readyz on every replica meanwhile; then time
    how long until every replica is ready and listening again."""
    time.sleep(max(0.0, t0 + at_s - time.time()))
    fleet.redis.stop()
    stopped = time.time()
    seen: list[set[str]] = [set() for _ in fleet.replicas]
    while time.time() < stopped + outage_s:
        for i in range(len(fleet.replicas)):
            seen[i].add(fleet.readyz(i))
        time.sleep(0.5)
    fleet.redis.start()
    restarted = time.time()
    return {
        "stopped_at_s": round(stopped - t0, 2),
        "down_s": round(restarted - stopped, 2),
        "readyz_during_outage": [sorted(s) for s in seen],
        "recovered_s": _recovered_s(fleet, restarted),
    }
