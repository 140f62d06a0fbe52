"""serve.json -> serve.md and serve.png: the serving benchmark's report (`benchmarks/serve.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.harness.report import Results, fmt, run_lines, table, targets_section
from benchmarks.harness.targets import Target


def _pin_note(pin: dict[str, Any]) -> str:
    if pin["server_pinned"] and pin["load_pinned"]:
        return "taskset"
    return "**not pinned**: taskset missing or those cores not available"


def flags(level: Mapping[str, Any]) -> str:
    """ "short, locust-limited": who limited a level, when someone did."""
    on = (("short", level.get("short_of_offered")), ("locust-limited", level["locust_limited"]))
    return ", ".join(name for name, flag in on if flag)


def _host_line(host: dict[str, Any] | None) -> list[str]:
    """The host's clock, caches and Python probe (start and end of the run), when recorded."""
    if not host:
        return []
    caches = ", ".join(f"{k} {v}" for k, v in host.get("caches", {}).items()) or "unknown"
    probe = host.get("python_probe_ms", {})
    return [
        f"Host: {host.get('cpu_mhz') or '?'} MHz; caches {caches}; Python probe "
        f"{probe.get('start')} ms at the start, {probe.get('end')} ms at the end "
        f"({host.get('python_probe', '')}).  "
    ]


def _header(results: Results) -> list[str]:
    """Title, command, commit, host, pinning, bundle and load."""
    b, load, pin = results["bundle"], results["load"], results["pinning"]
    workers = (
        f" (shipped_2w: 2 workers on cores {pin['workers_cpu']}, see Workers)."
        if pin.get("workers_cpu")
        else "."
    )
    return [
        "# Serving benchmark",
        "",
        *run_lines(results),
        *_host_line(results.get("host")),
        f"Servers on core {pin['server_cpu']}, load generator on core {pin['load_cpu']} "
        f"({_pin_note(pin)}); uvicorn, 1 worker, uvloop, httptools, no access log{workers}",
        "",
        f"Bundle: `{b['path']}` (version `{b['version']}`, {b['n_items']:,} items, dim "
        f"{b['dim']}, {b['item_encoding']} items; {results['inputs']['bundle_source']}).  ",
        f"Load: {load['tool']}, {load['duration_s']:g} s per level, "
        f"{load['user_rps']:g} rps per user; {load['mix']['full_catalog']:.0%} full-catalog, "
        f"{load['mix']['rerank']:.0%} rerank of 50-200 candidates; histories: "
        f"{load['workload']['histories']} ({results['inputs']['histories_from']}), mean length "
        f"{load['workload']['mean_history_len']}. Ladder stops {load['stop_rule']}.",
        "",
    ]


def _summary_section(variants: list[dict[str, Any]]) -> list[str]:
    """One row per variant: its max rps at p99 <= 50 ms, the p99 there, RSS, weights."""
    rows = []
    for v in variants:
        best = v["max_rps_at_p99_50ms"]
        at = [lv for lv in v["levels"] if lv.get("rps") == best]
        shown = fmt(best, ",.0f") + (" (≥, ladder exhausted)" if v.get("ladder_exhausted") else "")
        if v.get("locust_limited"):
            shown += " (locust-limited)"
        p99 = fmt(at[0]["p99_ms"], ".0f") if at else "-"
        rss = fmt(v.get("rss_mb"), ",.0f")
        rows.append([f"**{v['name']}**", v["description"], shown, p99, rss, v.get("weights", "-")])
    header = ["variant", "what", "max rps at p99 ≤ 50 ms", "p99 there (ms)", "RSS (MiB)", "weights"]
    return ["## Summary", "", *table(header, rows)]


LEVEL_HEADER = [
    "offered rps",
    "rps",
    "p50 ms",
    "p99 ms",
    "failures",
    "server cpu",
    "locust cpu",
    "mean batch",
    "flags",
]


def _level_row(lv: dict[str, Any]) -> list[str]:
    return [
        fmt(lv["offered_rps"], ",.0f"),
        fmt(lv["rps"], ",.1f"),
        fmt(lv["p50_ms"], ".0f"),
        fmt(lv["p99_ms"], ".0f"),
        f"{lv['failures']:.2%}",
        fmt(lv["server_cpu"], ".2f"),
        fmt(lv["locust_cpu"], ".2f"),
        fmt(lv.get("batch_mean"), ".1f"),
        flags(lv),
    ]


def _levels_section(variants: list[dict[str, Any]]) -> list[str]:
    """Every variant's levels, its level at 70% of its max and its wrk run, when it has them."""
    out = ["## Levels", ""]
    for v in variants:
        out += [
            f"### {v['name']}",
            "",
            *table(LEVEL_HEADER, [_level_row(lv) for lv in v["levels"]]),
        ]
        if v.get("p99_at_70pct"):
            a = v["p99_at_70pct"]
            out += [
                "",
                f"At 70% of its max ({fmt(a['offered_rps'], ',.0f')} rps offered): "
                f"{fmt(a['rps'], ',.1f')} rps, p50 {fmt(a['p50_ms'], '.0f')} ms, p99 "
                f"{fmt(a['p99_ms'], '.0f')} ms.",
            ]
        if v.get("wrk"):
            out += ["", _wrk_line(v["wrk"])]
        out.append("")
    return out


def _target_cells(name: str, t: Target) -> tuple[str, str]:
    return fmt(t["value"], ".3g"), f"{t['threshold']:g}"


def _limits_section(results: Results) -> list[str]:
    """Which variants locust limited, and the ceiling's closed-loop figure."""
    out = []
    limited = [v["name"] for v in results["variants"] if v.get("locust_limited")]
    if limited:
        out += [
            f"**Locust was the limit** for {', '.join(limited)}: its core was saturated (or "
            "it fell short of the offered rate while the server had room); wrk's figures "
            "are given above.",
            "",
        ]
    if results.get("ceiling_wrk"):
        out += ["Ceiling with wrk: " + _wrk_line(results["ceiling_wrk"]), ""]
    return out


SCALE_HEADER = [
    "catalog",
    "items",
    "items as",
    "offered rps",
    "rps",
    "p50 ms",
    "p99 ms",
    "recall@10",
    "RSS MiB",
]


def _scale_section(scale: list[dict[str, Any]]) -> list[str]:
    if not scale:
        return []
    rows = [
        [
            s["label"],
            f"{s['items']:,}",
            s["item_encoding"],
            fmt(s["offered_rps"], ",.0f"),
            fmt(s["rps"], ",.1f"),
            fmt(s["p50_ms"], ".0f"),
            fmt(s["p99_ms"], ".0f"),
            fmt(s["recall@10"], ".3f"),
            fmt(s["rss_mb"], ",.0f"),
        ]
        for s in scale
    ]
    return [
        "## Scale",
        "",
        "The real service (micro-batching on), one offered load; RSS: VmRSS of the "
        "server after the level; recall@10 as supplied with the bundle.",
        "",
        *table(SCALE_HEADER, rows),
        "",
    ]


def render_markdown(results: Results) -> str:
    variants: list[dict[str, Any]] = results["variants"]
    out = [
        *_header(results),
        *_summary_section(variants),
        "",
        *_levels_section(variants),
        *_sequential_section(results.get("sequential")),
        *_p50_section(results.get("p50_vs_ceiling")),
        *_workers_section(results.get("workers")),
        *targets_section(results["targets"], _target_cells),
        *_limits_section(results),
        *_scale_section(results["scale"]),
        "## Notes",
        "",
        *(f"- {n}" for n in results["notes"]),
        "",
    ]
    return "\n".join(out)


def _sequential_section(seq: dict[str, Any] | None) -> list[str]:
    """One caller, back to back: server and round-trip percentiles, overall and per kind."""
    if not seq:
        return []
    rows = []
    for label, s in (("all", seq), *sorted(seq.get("by_kind", {}).items())):
        for side, what in (("server", "server (Server-Timing)"), ("client", "round trip")):
            pcts = [fmt(s[f"{side}_p{q}_ms"], ".2f") for q in (50, 90, 99)]
            rows.append([label, what, str(s["n"]), *pcts])
    pinned = "pinned" if seq.get("client_pinned") else "**not pinned**"
    return [
        "## Sequential: one caller, one keep-alive connection",
        "",
        f"shipped, {seq['n']:,} `POST /recommend` back to back after {seq['warmup_requests']} "
        f"unrecorded ({seq['mix']['full_catalog']:.0%} full catalog, "
        f"{seq['mix']['rerank']:.0%} rerank, the locust workload's bodies), before its ladder; "
        f"client {seq['client']}, on core {seq['client_cpu']} ({pinned}). Achieved "
        f"{fmt(seq.get('achieved_rps'), ',.0f')} rps; failures {seq['failures']}, reconnects "
        f"{seq['reconnects']}, answers without Server-Timing {seq['server_timing_missing']}.",
        "",
        *table(["requests", "time", "n", "p50 ms", "p90 ms", "p99 ms"], rows),
        "",
        f"Server time: {seq['server_time']}. Round trip: {seq['client_time']}.",
        "",
    ]


def _p50_section(cmp: dict[str, Any] | None) -> list[str]:
    """shipped's p50 against the ceiling's at each offered load up to half its max rps."""
    if not cmp:
        return []
    head = [
        "## p50 against the ceiling, same offered load",
        "",
        f"Every level of shipped's ladder up to {cmp['share']:.0%} of its max rps "
        f"({fmt(cmp['shipped_max_rps'], ',.0f')} rps, so offered ≤ "
        f"{fmt(cmp['up_to_offered'], ',.0f')}); target: shipped p50 - ceiling p50 ≤ "
        f"{cmp['target_excess_ms']:g} ms. locust's p50 is in whole ms. A level the ceiling did "
        "not run is not compared (no interpolation).",
        "",
    ]
    if not cmp["levels"]:
        return [*head, cmp.get("note", "No level to compare."), ""]
    rows = [
        [
            fmt(r["offered"], ",.0f"),
            fmt(r["shipped_p50_ms"], ".0f"),
            fmt(r["ceiling_p50_ms"], ".0f"),
            fmt(r["excess_ms"], "+.0f"),
            {True: "PASS", False: "**FAIL**"}.get(r["passed"], r.get("note", "not compared")),
        ]
        for r in cmp["levels"]
    ]
    header = ["offered rps", "shipped p50 ms", "ceiling p50 ms", "excess ms", "result"]
    return [*head, *table(header, rows), ""]


WORKERS_HEADER = [
    "variant",
    "workers",
    "server cores",
    "max rps at p99 ≤ 50 ms",
    "p99 there (ms)",
    "server cores busy",
    "locust cores busy",
    "both",
]


def _workers_section(w: dict[str, Any] | None) -> list[str]:
    """1 vs 2 workers: max rps at p99 ≤ 50 ms, how busy the machine was there, the ratio."""
    if not w:
        return []
    rows = []
    for s in (w["one_worker"], w["two_workers"]):
        if s is None:
            continue
        shown = fmt(s["max_rps_at_p99_50ms"], ",.0f")
        if s.get("ladder_exhausted"):
            shown += " (≥, ladder exhausted)"
        busy = [
            fmt(s[k], ".2f")
            for k in ("server_cores_busy_at_max", "locust_cores_busy_at_max", "cores_busy_at_max")
        ]
        p99 = fmt(s["p99_ms_at_max"], ".0f")
        rows.append([s["variant"], str(s["workers"]), str(s["server_cpu"]), shown, p99, *busy])
    cores = w.get("machine_cores")
    return [
        "## Workers: 1 against 2 (no target)",
        "",
        *table(WORKERS_HEADER, rows),
        "",
        f"2 workers / 1: **{fmt(w['ratio'], '.2f')}**"
        + (f" on a {cores}-core machine" if cores else "")
        + f". {w['note']}",
        "",
    ]


def _wrk_line(w: dict[str, Any]) -> str:
    if "error" in w:
        return f"wrk: {w['error']}"
    return (
        f"wrk ({w['threads']} thread, {w['connections']} connections, closed loop, "
        f"{w['duration_s']} s, one fixed full-catalog body): {fmt(w['rps'], ',.0f')} rps, p50 "
        f"{fmt(w['p50_ms'], '.2f')} ms, p99 {fmt(w['p99_ms'], '.2f')} ms, non-2xx "
        f"{w['non_2xx']}."
    )


COLORS = {
    "ceiling": "tab:gray",
    "naive": "tab:red",
    "student_fp32": "tab:orange",
    "shipped": "tab:blue",
    "shipped_2w": "tab:cyan",
}


def _plot_variants(results: Results, ax_lat: Any, ax_rps: Any) -> float:
    """Each variant's p99 (solid), p50 (dashed) and achieved rps against offered load, and its
    p99 at 70% of its max (a star); the highest p99 drawn."""
    top = 1.0
    for v in results["variants"]:
        c = COLORS.get(v["name"], "tab:green")
        lv = [x for x in v["levels"] if x.get("p99_ms") is not None]
        xs = [x["offered_rps"] for x in lv]
        p50 = [max(x["p50_ms"] or 0.0, 0.5) for x in lv]  # locust rounds to whole ms
        p99 = [max(x["p99_ms"], 0.5) for x in lv]
        top = max([top, *p99])
        ax_lat.plot(xs, p99, "-o", color=c, label=f"{v['name']} p99", markersize=4)
        ax_lat.plot(xs, p50, "--", color=c, label=f"{v['name']} p50", linewidth=1)
        ax_rps.plot(xs, [x["rps"] or 0 for x in lv], "-o", color=c, label=v["name"], markersize=4)
        a = v.get("p99_at_70pct")
        if a and a.get("p99_ms") is not None:
            label = f"{v['name']} p99 at 70% of max"
            y = max(a["p99_ms"], 0.5)
            ax_lat.scatter(
                [a["offered_rps"]], [y], marker="*", s=160, color=c, zorder=4, label=label
            )
    return top


def _latency_axes(ax: Any, *, limit: float, stop: float, top: float) -> None:
    for y, ls, label in ((limit, ":", f"{limit:g} ms"), (stop, "-.", f"{stop:g} ms (stop)")):
        ax.axhline(y, color="black", linestyle=ls, linewidth=1, label=label)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_ylim(0.4, max(top * 1.5, stop * 2))
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("latency percentiles vs offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _throughput_axes(ax: Any, offered: list[float]) -> None:
    lo, hi = min(offered), max(offered)
    ax.plot(
        [lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle=":", label="achieved = offered"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("achieved (requests/s)")
    ax.set_title("throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def render_plot(results: Results, path: Path) -> None:
    """p50 (dashed) and p99 (solid) against offered load per variant, log y; achieved rps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(13, 5.4), dpi=110)
    FigureCanvasAgg(fig)
    ax_lat, ax_rps = fig.subplots(1, 2)
    top = _plot_variants(results, ax_lat, ax_rps)
    load = results["load"]
    _latency_axes(
        ax_lat, limit=float(load["p99_limit_ms"]), stop=float(load["stop_p99_ms"]), top=top
    )
    offered = [x["offered_rps"] for v in results["variants"] for x in v["levels"]] or [1.0]
    _throughput_axes(ax_rps, offered)
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    for ax in (ax_lat, ax_rps):
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
    fig.suptitle(f"Serving on one core of {results['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
