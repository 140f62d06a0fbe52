"""The swap benchmark's results (`benchmarks.swap`): the phases summarised, the targets, and
the same as markdown and a plot.

    swap_summary(answers, swaps, steady)["p99_during_swaps_ms"]
    evaluate_targets(results)["all_passed"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from benchmarks.harness.fleet import FLEET_WAIT_S
from benchmarks.harness.report import (
    Results,
    capacity_line,
    run_lines,
    table,
    targets_section,
)
from benchmarks.harness.targets import Target, Verdict, ratio, target, verdict
from benchmarks.harness.trace import Answer, RunSummary, in_windows, percentile, summarize
from benchmarks.swap_phases import MEMORY_VERSIONS, VERSIONS, CyclePoint, SwapRecord

AFTER_SWAP_S = 0.5  # "during swaps": from the call until this long after the fleet served it
TARGET_P99_RATIO = 1.5
TARGET_PROPAGATION_S = 2.0
TARGET_RSS_GROWTH = 0.10


class SwapSummary(TypedDict):
    requests: int
    failed: int
    swaps: int
    swaps_ok: int
    p99_steady_ms: float | None
    p99_during_swaps_ms: float | None
    requests_during_swaps: int
    p99_whole_run_ms: float | None
    p50_whole_run_ms: float | None
    max_ms: float | None
    versions_seen: list[str]
    answers_per_version: dict[str, int]
    statuses: dict[str, int]
    activate_s_max: float | None
    fleet_propagation_max_s: float | None
    cold_swaps: int
    fleet_propagation_cold_max_s: float | None
    fleet_propagation_warm_max_s: float | None
    swap_log: list[SwapRecord]


class MemorySummary(TypedDict):
    cycles: int
    cycle: str
    replica: str
    rss_mb_after_5: float | None
    rss_mb_after_100: float | None
    rss_mb_per_replica_after_5: list[float | None]
    rss_mb_per_replica_after_last: list[float | None]
    fleet_propagation_cold_max_s: float | None
    curve: list[CyclePoint]


# --- summaries -------------------------------------------------------------------------------
def _slowest(swaps: Sequence[SwapRecord], *, warm: bool) -> float | None:
    """The slowest fleet-wide propagation among warm (or cold) swaps that got there."""
    return max(
        (f for s in swaps if s["warm"] is warm and (f := s["fleet_s"]) is not None), default=None
    )


def swap_summary(answers: list[Answer], swaps: list[SwapRecord], steady: RunSummary) -> SwapSummary:
    windows = [
        (s["start"], s["start"] + (s["fleet_s"] or FLEET_WAIT_S) + AFTER_SWAP_S) for s in swaps
    ]
    during = [a.ms for a in answers if in_windows(a.start, windows)]
    whole = summarize(answers)
    props = [f for s in swaps if (f := s["fleet_s"]) is not None]
    return {
        "requests": whole["requests"],
        "failed": whole["failed"],
        "swaps": len(swaps),
        "swaps_ok": sum(1 for s in swaps if s["status"] == 200 and s["fleet_s"] is not None),
        "p99_steady_ms": steady["p99_ms"],
        "p99_during_swaps_ms": percentile(during, 99),
        "requests_during_swaps": len(during),
        "p99_whole_run_ms": whole["p99_ms"],
        "p50_whole_run_ms": whole["p50_ms"],
        "max_ms": whole["max_ms"],
        "versions_seen": whole["versions_seen"],
        "answers_per_version": {
            v: sum(1 for a in answers if a.version == v) for v in whole["versions_seen"]
        },
        "statuses": whole["statuses"],
        "activate_s_max": max((s["activate_s"] for s in swaps), default=None),
        "fleet_propagation_max_s": max(props) if len(props) == len(swaps) and props else None,
        # Cold: a version some replica had to load (the first swap to each version); warm:
        # every replica held it as its standby (the previous active version).
        "cold_swaps": sum(1 for s in swaps if not s["warm"]),
        "fleet_propagation_cold_max_s": _slowest(swaps, warm=False),
        "fleet_propagation_warm_max_s": _slowest(swaps, warm=True),
        "swap_log": swaps,
    }


def memory_summary(curve: list[CyclePoint]) -> MemorySummary:
    n = len(curve) - 1
    at5 = curve[min(5, n)]["rss_mb"]
    last = curve[n]["rss_mb"]
    growth = [b / a - 1 if a and b else math.inf for a, b in zip(at5, last, strict=True)]
    worst = max(range(len(growth)), key=lambda i: growth[i])
    cold = max((f for c in curve if (f := c.get("fleet_s")) is not None), default=0.0)
    return {
        "cycles": n,
        "cycle": "activate swap-b, then swap-a, through r1; r2 follows",
        "replica": f"r{worst + 1} (the one that grew more)",
        "rss_mb_after_5": at5[worst],
        "rss_mb_after_100": last[worst],
        "rss_mb_per_replica_after_5": at5,
        "rss_mb_per_replica_after_last": last,
        # every memory-cycle activation loads from disk on both replicas (no load running)
        "fleet_propagation_cold_max_s": round(cold, 3) or None,
        "curve": curve,
    }


# --- targets ---------------------------------------------------------------------------------
def _swap_targets(s: SwapSummary, m: MemorySummary) -> dict[str, Target]:
    p99_ratio = ratio(s["p99_during_swaps_ms"], s["p99_steady_ms"], 3)
    before, after = m["rss_mb_after_5"], m["rss_mb_after_100"]
    growth = round(after / before - 1.0, 4) if after and before else None
    return {
        "swap_failed": target(s["failed"], 0, "==", "failed requests during the swap run"),
        "swap_p99_ratio": target(
            p99_ratio, TARGET_P99_RATIO, "<=", "p99 during swaps / steady p99"
        ),
        "versions": target(
            set(s["versions_seen"]) <= set(VERSIONS),
            True,
            "==",
            "every answer named one of the two versions",
        ),
        "swaps_ok": target(
            s["swaps_ok"], s["swaps"], "==", "activations answered 200 and reached both replicas"
        ),
        "fleet_propagation_s": target(
            s["fleet_propagation_max_s"],
            TARGET_PROPAGATION_S,
            "<=",
            "slowest activation call → whole fleet serving it",
        ),
        "rss_growth": target(
            growth,
            TARGET_RSS_GROWTH,
            "<=",
            f"RSS after {m['cycles']} swap cycles / after 5, minus 1 (worse replica)",
        ),
    }


def _hostile_targets(o: dict[str, Any], f: dict[str, Any], b: dict[str, Any]) -> dict[str, Target]:
    return {
        "outage_failed": target(o["failed"], 0, "==", "failed requests with Redis stopped"),
        "fuzz_server_errors": target(f["server_errors"], 0, "==", "5xx answers to the fuzzer"),
        "fuzz_schema_violations": target(
            f["schema_violations"], 0, "==", "answers not matching the OpenAPI schema"
        ),
        "malicious_rejected": target(
            b["rejected"], b["tried"], "==", "malicious bundles answered 4xx"
        ),
        "malicious_reason_named": target(
            b["reason_matched"], b["tried"], "==", "4xx answers naming the expected reason"
        ),
        "serving_unchanged": target(
            b["serving_version_changed"], False, "==", "serving version changed by the corpus"
        ),
    }


def evaluate_targets(results: Results) -> Verdict:
    r = results
    return verdict(
        {
            **_swap_targets(r["swap_under_load"], r["memory"]),
            **_hostile_targets(r["redis_outage"], r["fuzz"], r["malicious_bundles"]),
        }
    )


# --- report ----------------------------------------------------------------------------------
def _header(r: Results) -> list[str]:
    return [
        "# Swap benchmark: hot swaps, faults and hostile input",
        "",
        *run_lines(r),
        f"Bundle: {r['bundle']['source']} ({r['bundle']['items']} items), served as "
        f"`{VERSIONS[0]}` and `{VERSIONS[1]}` (and `{MEMORY_VERSIONS[2]}` in the memory cycles, "
        "so that each of their activations loads from disk). Two replicas pinned to core 0 "
        "sharing one Redis; locust on core 1, round-robin over the replicas. Swaps are warm "
        "when every replica held the version loaded (uploaded and announced: `prepared`; or "
        "the previous one: `standby`), cold otherwise (every memory-cycle activation).",
        "",
        capacity_line(r),
        "",
    ]


def _measurements(r: Results) -> list[list[str]]:
    s, m, o = r["swap_under_load"], r["memory"], r["redis_outage"]
    f, b = r["fuzz"], r["malicious_bundles"]
    readyz = "; ".join(", ".join(x) for x in o["readyz_during_outage"])
    return [
        ["swap run: requests / failed", f"{s['requests']:,} / {s['failed']}"],
        ["swaps (ok / tried)", f"{s['swaps_ok']} / {s['swaps']}"],
        ["steady p99 (no swaps)", f"{s['p99_steady_ms']} ms"],
        [
            f"p99 during swaps ({s['requests_during_swaps']:,} requests)",
            f"{s['p99_during_swaps_ms']} ms",
        ],
        ["p99 whole swap run", f"{s['p99_whole_run_ms']} ms"],
        ["versions seen", ", ".join(s["versions_seen"])],
        [
            "slowest activation call / whole fleet",
            f"{s['activate_s_max']} s / {s['fleet_propagation_max_s']} s",
        ],
        [
            f"whole fleet, slowest cold swap ({s['cold_swaps']}) / warm swap "
            f"({s['swaps'] - s['cold_swaps']})",
            f"{s['fleet_propagation_cold_max_s']} s / {s['fleet_propagation_warm_max_s']} s",
        ],
        [
            "whole fleet, slowest cold activation of the memory cycles (no load)",
            f"{m.get('fleet_propagation_cold_max_s')} s",
        ],
        [
            f"RSS after 5 / {m['cycles']} swap cycles ({m['replica']})",
            f"{m['rss_mb_after_5']} / {m['rss_mb_after_100']} MiB",
        ],
        ["Redis outage run: requests / failed", f"{o['requests']:,} / {o['failed']}"],
        [
            "Redis down / replicas ready again after restart",
            f"{o['down_s']} s / {o['recovered_s']} s",
        ],
        ["/readyz while Redis was down", readyz],
        [
            "fuzz: cases / 5xx / schema violations",
            f"{f['cases']:,} / {f['server_errors']} / {f['schema_violations']}",
        ],
        [
            "malicious bundles: tried / rejected 4xx / reason named",
            f"{b['tried']} / {b['rejected']} / {b['reason_matched']}",
        ],
        ["serving version changed by the corpus", str(b["serving_version_changed"])],
    ]


def render_markdown(r: Results) -> str:
    out = [
        *_header(r),
        *table(["measurement", "value"], _measurements(r)),
        "",
        *targets_section(r["targets"]),
    ]
    return "\n".join(out)


def _latency_plot(ax: Any, r: Results, trace: list[Answer]) -> None:
    """Every request's latency over the swap run, the activations marked."""
    s = r["swap_under_load"]
    t0 = min(a.start for a in trace)
    xs, ys = [a.start - t0 for a in trace], [a.ms for a in trace]
    ax.scatter(xs, ys, s=1, alpha=0.3, color="tab:blue", label="request latency")
    for i, sw in enumerate(s["swap_log"]):
        label = "activation" if i == 0 else None
        ax.axvline(sw["start"] - t0, color="tab:red", alpha=0.4, linewidth=0.8, label=label)
    steady = s["p99_steady_ms"]
    ax.axhline(steady, color="gray", linestyle="--", label=f"steady p99 {steady} ms")
    ax.set_yscale("log")
    ax.set_xlabel("seconds into the swap run")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"{s['swaps']} swaps under {r['load_rps']:.0f} rps, 2 replicas")
    ax.legend(fontsize=8, loc="upper right")


def _memory_plot(ax: Any, curve: list[dict[str, Any]]) -> None:
    """Each replica's resident size after every swap cycle."""
    for i in range(len(curve[0]["rss_mb"])):
        xs, ys = [c["cycle"] for c in curve], [c["rss_mb"][i] for c in curve]
        ax.plot(xs, ys, marker=".", label=f"replica r{i + 1}")
    ax.set_xlabel("swap cycles (swap-b, then swap-a)")
    ax.set_ylabel("resident size (MiB)")
    ax.set_title("memory across swaps")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def render_plot(r: Results, trace: list[Answer], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax_lat, ax_mem = fig.subplots(1, 2)
    _latency_plot(ax_lat, r, trace)
    _memory_plot(ax_mem, r["memory"]["curve"])
    fig.tight_layout()
    fig.savefig(path, format="png")
