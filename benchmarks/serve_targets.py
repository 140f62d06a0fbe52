"""The serving benchmark's comparisons and targets (issue 4, "Storefront-grade latency at
every load"), from the measured numbers only.

    evaluate_targets(variants, sequential=seq)["all_passed"]
    p50_vs_ceiling(variants)["levels"]      # shipped's p50 against the ceiling's, per level
    workers_comparison(variants, load_cpu="1", cores=2)   # 1 worker against 2, no target
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict

from benchmarks.harness.load import Level
from benchmarks.harness.pinning import shared_cores
from benchmarks.harness.targets import Target, Verdict, ratio, target, verdict
from benchmarks.serve_ladder import at_max
from benchmarks.serve_variants import WORKERS_VARIANT, VariantResult

TARGET_VS_CEILING = 0.7
TARGET_VS_NAIVE = 10.0
TARGET_P99_AT_70PCT_MS = 25.0
TARGET_P50_EXCESS_MS = 2.0  # shipped p50 - ceiling p50, same offered load ...
P50_COMPARE_SHARE = 0.5  # ... at every level up to this share of shipped's max rps
TARGET_SEQ_SERVER_P50_MS = 1.5  # one caller, back to back: Server-Timing p50
TARGET_SEQ_CLIENT_P50_MS = 3.0  # ... and the round trip's p50
DIGITS = 4  # targets show their value rounded so; they are judged on the value itself


class P50Row(TypedDict):
    """One offered load: shipped's p50 against the ceiling's (whole ms, as locust gives)."""

    offered: float
    shipped_p50_ms: float | None
    ceiling_p50_ms: float | None
    excess_ms: float | None
    passed: bool | None  # None: not compared
    note: NotRequired[str]


class P50Comparison(TypedDict):
    shipped_max_rps: float | None
    share: float
    up_to_offered: float | None
    target_excess_ms: float
    levels: list[P50Row]
    note: NotRequired[str]


class WorkersSide(TypedDict):
    """A variant at its max rps at p99 <= 50 ms, and how busy the machine was there."""

    variant: str
    workers: int
    server_cpu: str | None
    max_rps_at_p99_50ms: float | None
    ladder_exhausted: bool
    p99_ms_at_max: float | None
    server_cores_busy_at_max: float | None
    locust_cores_busy_at_max: float | None
    cores_busy_at_max: float | None
    locust_limited: bool


class WorkersComparison(TypedDict):
    one_worker: WorkersSide | None
    two_workers: WorkersSide
    ratio: float | None
    machine_cores: int | None
    load_cpu: str | None
    load_cpu_shared: bool
    note: str


def _by_name(variants: Sequence[VariantResult]) -> dict[str, VariantResult]:
    return {v["name"]: v for v in variants}


def _compare_level(lv: Level, c: Level | None, target_ms: float) -> P50Row:
    """One shipped level against the ceiling's level of the same offered load (None: the
    ceiling did not run it)."""
    s50, c50 = lv.get("p50_ms"), c.get("p50_ms") if c else None
    row: P50Row = {
        "offered": lv["offered_rps"],
        "shipped_p50_ms": s50,
        "ceiling_p50_ms": c50,
        "excess_ms": None,
        "passed": None,
    }
    if c is None:
        row["note"] = "the ceiling did not run this offered load: not compared"
    elif c50 is None:
        row["note"] = "the ceiling has no p50 at this offered load: not compared"
    elif s50 is None:
        row["passed"] = False
        row["note"] = "shipped has no p50 at this offered load"
    else:
        excess = round(s50 - c50, 3)
        row["excess_ms"], row["passed"] = excess, excess <= target_ms
    return row


def p50_vs_ceiling(
    variants: Sequence[VariantResult],
    *,
    share: float = P50_COMPARE_SHARE,
    target_ms: float = TARGET_P50_EXCESS_MS,
) -> P50Comparison:
    """shipped's p50 against the ceiling's at the same offered load, for every level of
    shipped's ladder up to `share` of its max rps (at p99 <= 50 ms). Only an exact match of
    offered load is compared: a level the ceiling did not run (a refinement level, say) is
    listed with `ceiling_p50_ms` None and `passed` None, never interpolated."""
    by = _by_name(variants)
    shipped, ceiling = by.get("shipped"), by.get("ceiling")
    best = shipped.get("max_rps_at_p99_50ms") if shipped else None
    out: P50Comparison = {
        "shipped_max_rps": best,
        "share": share,
        "up_to_offered": None if best is None else round(share * best, 1),
        "target_excess_ms": target_ms,
        "levels": [],
    }
    if shipped is None or best is None:
        out["note"] = "shipped not run" if shipped is None else "shipped has no max rps"
        return out
    ceiling_at = {round(lv["offered_rps"], 1): lv for lv in ceiling["levels"]} if ceiling else {}
    for lv in sorted(shipped["levels"], key=lambda x: x["offered_rps"]):
        if lv["offered_rps"] <= share * best:
            c = ceiling_at.get(round(lv["offered_rps"], 1))
            out["levels"].append(_compare_level(lv, c, target_ms))
    if not out["levels"]:
        out["note"] = "no level of shipped's ladder at or below this share of its max rps"
    return out


def _workers_side(v: VariantResult | None) -> WorkersSide | None:
    """A variant's max rps at p99 <= 50 ms and how busy the machine was there."""
    if v is None:
        return None
    best = v["max_rps_at_p99_50ms"]
    at = at_max(v["levels"], best)
    lv: Mapping[str, Any] = at[0] if at else {}
    busy: list[float | None] = [lv.get("server_cpu"), lv.get("locust_cpu")]
    return {
        "variant": v["name"],
        "workers": v.get("workers", 1),
        "server_cpu": v.get("server_cpu"),
        "max_rps_at_p99_50ms": best,
        "ladder_exhausted": v.get("ladder_exhausted"),
        "p99_ms_at_max": lv.get("p99_ms"),
        "server_cores_busy_at_max": lv.get("server_cpu"),
        "locust_cores_busy_at_max": lv.get("locust_cpu"),
        "cores_busy_at_max": (
            round(sum(b for b in busy if b is not None), 2) if None not in busy else None
        ),
        "locust_limited": v.get("locust_limited"),
    }


def _workers_note(
    one: WorkersSide | None,
    two: WorkersSide,
    *,
    load_cpu: str | None,
    shared: str,
    cores: int | None,
) -> str:
    """What the comparison is, and what a load generator sharing a worker's core limits."""
    note = (
        f"1 worker on core {one['server_cpu'] if one else '?'} (the shipped ladder) against "
        f"{two['workers']} workers on cores {two['server_cpu']}, the load generator on core "
        f"{load_cpu} in both."
    )
    if shared:
        note += (
            f" The load generator shares core(s) {shared} with a worker (the machine has "
            f"{cores or '?'} cores): the ratio is a lower bound of what a core dedicated to "
            "the second worker would give, a cores-busy total near the machine's core count "
            "means the machine, not the service, set the figure, and locust_limited (locust "
            ">= 90% of a core) cannot fire while locust shares its core."
        )
    return note


def workers_comparison(
    variants: Sequence[VariantResult], *, load_cpu: str | None, cores: int | None = None
) -> WorkersComparison | None:
    """Max rps at p99 <= 50 ms of shipped (1 worker) and shipped_2w (2 workers), the ratio,
    and how busy the machine was at each one's max; None when shipped_2w did not run."""
    by = _by_name(variants)
    if WORKERS_VARIANT not in by:
        return None
    one, two = _workers_side(by.get("shipped")), _workers_side(by[WORKERS_VARIANT])
    assert two is not None
    shared = shared_cores(two["server_cpu"], load_cpu)
    return {
        "one_worker": one,
        "two_workers": two,
        "ratio": ratio(two["max_rps_at_p99_50ms"], one["max_rps_at_p99_50ms"] if one else None, 3),
        "machine_cores": cores,
        "load_cpu": load_cpu,
        "load_cpu_shared": bool(shared),
        "note": _workers_note(one, two, load_cpu=load_cpu, shared=shared, cores=cores),
    }


def _throughput_targets(by: Mapping[str, VariantResult]) -> dict[str, Target]:
    def best(name: str) -> float | None:
        return by[name]["max_rps_at_p99_50ms"] if name in by else None

    return {
        "shipped_vs_ceiling": target(
            ratio(best("shipped"), best("ceiling")),
            TARGET_VS_CEILING,
            ">=",
            "shipped max rps at p99 ≤ 50 ms / ceiling's",
            digits=DIGITS,
        ),
        "shipped_vs_naive": target(
            ratio(best("shipped"), best("naive")),
            TARGET_VS_NAIVE,
            ">=",
            "shipped max rps at p99 ≤ 50 ms / naive's (PyTorch fp32 teacher, one at a time)",
            digits=DIGITS,
        ),
    }


def _latency_targets(variants: Sequence[VariantResult]) -> dict[str, Target]:
    shipped = _by_name(variants).get("shipped")
    at70: Mapping[str, Any] = (shipped.get("p99_at_70pct") if shipped else None) or {}
    compared = [r for r in p50_vs_ceiling(variants)["levels"] if r["passed"] is not None]
    excess = [r["excess_ms"] for r in compared if r["excess_ms"] is not None]
    t = {
        "shipped_p99_at_70pct_ms": target(
            at70.get("p99_ms"),
            TARGET_P99_AT_70PCT_MS,
            "<=",
            "shipped p99 (ms) at 70% of its own max rps",
            digits=DIGITS,
        ),
        "shipped_p50_excess_ms": target(
            max(excess) if excess else None,
            TARGET_P50_EXCESS_MS,
            "<=",
            f"worst shipped p50 - ceiling p50 (ms), same offered load, every level up to "
            f"{P50_COMPARE_SHARE:.0%} of shipped's max rps ({len(compared)} compared)",
            digits=DIGITS,
        ),
    }
    # A level compared and failed fails the target even if `max` was within (a None excess).
    if any(r["passed"] is False for r in compared):
        t["shipped_p50_excess_ms"]["passed"] = False
    return t


def _sequential_targets(seq: Mapping[str, Any]) -> dict[str, Target]:
    return {
        "sequential_server_p50_ms": target(
            seq.get("server_p50_ms"),
            TARGET_SEQ_SERVER_P50_MS,
            "<=",
            "one caller, back to back: p50 of the server's own time (Server-Timing)",
            digits=DIGITS,
        ),
        "sequential_client_p50_ms": target(
            seq.get("client_p50_ms"),
            TARGET_SEQ_CLIENT_P50_MS,
            "<=",
            "one caller, back to back: p50 of the round trip (one keep-alive connection)",
            digits=DIGITS,
        ),
    }


def evaluate_targets(
    variants: Sequence[VariantResult], *, sequential: Mapping[str, Any] | None = None
) -> Verdict:
    """Every target from measured numbers only; a figure not measured never passes."""
    return verdict(
        {
            **_throughput_targets(_by_name(variants)),
            **_latency_targets(variants),
            **_sequential_targets(sequential or {}),
        }
    )
