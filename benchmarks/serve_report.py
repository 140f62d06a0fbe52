"""serve.json -> serve.md and serve.png: the serving benchmark's report (`benchmarks/serve.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


# --- report ----------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _pin_note(pin: dict[str, Any]) -> str:
    if pin["server_pinned"] and pin["load_pinned"]:
        return "taskset"
    return "**not pinned**: taskset missing or those cores not available"


def flags(level: dict[str, Any]) -> str:
    flags = (("short", level.get("short_of_offered")), ("locust-limited", level["locust_limited"]))
    return ", ".join(name for name, on in flags if on)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


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


def render_markdown(results: dict[str, Any]) -> str:
    variants: list[dict[str, Any]] = results["variants"]
    b = results["bundle"]
    load = results["load"]
    pin = results["pinning"]
    out = [
        "# Serving benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Commit: `{results['git_commit']}`"
        + (" (uncommitted changes)" if results.get("git_dirty") else "")
        + f"; CPU {results['cpu']} ({results['cpu_count']} cores); wall time "
        f"{results['wall_seconds']:.0f} s  ",
        *_host_line(results.get("host")),
        f"Servers on core {pin['server_cpu']}, load generator on core {pin['load_cpu']} "
        f"({_pin_note(pin)}); uvicorn, 1 "
        "worker, uvloop, httptools, no access log"
        + (
            f" (shipped_2w: 2 workers on cores {pin['workers_cpu']}, see Workers)."
            if pin.get("workers_cpu")
            else "."
        ),
        "",
        f"Bundle: `{b['path']}` (version `{b['version']}`, {b['n_items']:,} items, dim "
        f"{b['dim']}, {b['item_encoding']} items; {results['inputs']['bundle_source']}).  ",
        f"Load: {load['tool']}, {load['duration_s']:g} s per level, "
        f"{load['user_rps']:g} rps per user; {load['mix']['full_catalog']:.0%} full-catalog, "
        f"{load['mix']['rerank']:.0%} rerank of 50-200 candidates; histories: "
        f"{load['workload']['histories']} ({results['inputs']['histories_from']}), mean length "
        f"{load['workload']['mean_history_len']}. Ladder stops {load['stop_rule']}.",
        "",
        "## Summary",
        "",
    ]
    rows = []
    for v in variants:
        best = v["max_rps_at_p99_50ms"]
        at = [lv for lv in v["levels"] if lv.get("rps") == best]
        shown = _f(best, ",.0f") + (" (≥, ladder exhausted)" if v.get("ladder_exhausted") else "")
        if v.get("locust_limited"):
            shown += " (locust-limited)"
        rows.append([
            f"**{v['name']}**", v["description"], shown,
            _f(at[0]["p99_ms"], ".0f") if at else "-",
            _f(v.get("rss_mb"), ",.0f"), v.get("weights", "-"),
        ])  # fmt: skip
    out += _table(
        ["variant", "what", "max rps at p99 ≤ 50 ms", "p99 there (ms)", "RSS (MiB)", "weights"],
        rows,
    )
    out += ["", "## Levels", ""]
    for v in variants:
        out += [f"### {v['name']}", ""]
        lrows = [
            [_f(lv["offered_rps"], ",.0f"), _f(lv["rps"], ",.1f"), _f(lv["p50_ms"], ".0f"),
             _f(lv["p99_ms"], ".0f"), f"{lv['failures']:.2%}", _f(lv["server_cpu"], ".2f"),
             _f(lv["locust_cpu"], ".2f"), flags(lv)]
            for lv in v["levels"]
        ]  # fmt: skip
        out += _table(
            ["offered rps", "rps", "p50 ms", "p99 ms", "failures", "server cpu", "locust cpu",
             "flags"],
            lrows,
        )  # fmt: skip
        if v.get("p99_at_70pct"):
            a = v["p99_at_70pct"]
            out += ["", f"At 70% of its max ({_f(a['offered_rps'], ',.0f')} rps offered): "
                    f"{_f(a['rps'], ',.1f')} rps, p50 {_f(a['p50_ms'], '.0f')} ms, p99 "
                    f"{_f(a['p99_ms'], '.0f')} ms."]  # fmt: skip
        if v.get("wrk"):
            out += ["", _wrk_line(v["wrk"])]
        out.append("")
    out += _sequential_section(results.get("sequential"))
    out += _p50_section(results.get("p50_vs_ceiling"))
    out += _workers_section(results.get("workers"))
    t = results["targets"]
    trows = []
    for key, v in t.items():
        if key == "all_passed":
            continue
        trows.append([key, v["what"], _f(v["value"], ".3g"), f"{v['op']} {v['threshold']:g}",
                      "PASS" if v["passed"] else "**FAIL**"])  # fmt: skip
    out += ["## Targets", "", *_table(["target", "measured as", "value", "required", "result"],
                                      trows), "",
            f"All targets: {'PASS' if t['all_passed'] else 'FAIL'}.", ""]  # fmt: skip
    limited = [v["name"] for v in variants if v.get("locust_limited")]
    if limited:
        out += [f"**Locust was the limit** for {', '.join(limited)}: its core was saturated (or "
                "it fell short of the offered rate while the server had room); wrk's figures "
                "are given above.", ""]  # fmt: skip
    if results.get("ceiling_wrk"):
        out += ["Ceiling with wrk: " + _wrk_line(results["ceiling_wrk"]), ""]
    if results["scale"]:
        srows = [
            [s["label"], f"{s['items']:,}", s["item_encoding"], _f(s["offered_rps"], ",.0f"),
             _f(s["rps"], ",.1f"), _f(s["p50_ms"], ".0f"), _f(s["p99_ms"], ".0f"),
             _f(s["recall@10"], ".3f"), _f(s["rss_mb"], ",.0f")]
            for s in results["scale"]
        ]  # fmt: skip
        out += ["## Scale", "",
                "The real service (micro-batching on), one offered load; RSS: VmRSS of the "
                "server after the level; recall@10 as supplied with the bundle.", "",
                *_table(["catalog", "items", "items as", "offered rps", "rps", "p50 ms",
                         "p99 ms", "recall@10", "RSS MiB"], srows), ""]  # fmt: skip
    out += ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    return "\n".join(out)


def _sequential_section(seq: dict[str, Any] | None) -> list[str]:
    """One caller, back to back: server and round-trip percentiles, overall and per kind."""
    if not seq:
        return []
    rows = []
    for label, s in (("all", seq), *sorted(seq.get("by_kind", {}).items())):
        for side, what in (("server", "server (Server-Timing)"), ("client", "round trip")):
            pcts = [_f(s[f"{side}_p{q}_ms"], ".2f") for q in (50, 90, 99)]
            rows.append([label, what, str(s["n"]), *pcts])
    pinned = "pinned" if seq.get("client_pinned") else "**not pinned**"
    return [
        "## Sequential: one caller, one keep-alive connection",
        "",
        f"shipped, {seq['n']:,} `POST /recommend` back to back after {seq['warmup_requests']} "
        f"unrecorded ({seq['mix']['full_catalog']:.0%} full catalog, "
        f"{seq['mix']['rerank']:.0%} rerank, the locust workload's bodies), before its ladder; "
        f"client {seq['client']}, on core {seq['client_cpu']} ({pinned}). Achieved "
        f"{_f(seq.get('achieved_rps'), ',.0f')} rps; failures {seq['failures']}, reconnects "
        f"{seq['reconnects']}, answers without Server-Timing {seq['server_timing_missing']}.",
        "",
        *_table(["requests", "time", "n", "p50 ms", "p90 ms", "p99 ms"], rows),
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
        f"({_f(cmp['shipped_max_rps'], ',.0f')} rps, so offered ≤ "
        f"{_f(cmp['up_to_offered'], ',.0f')}); target: shipped p50 - ceiling p50 ≤ "
        f"{cmp['target_excess_ms']:g} ms. locust's p50 is in whole ms. A level the ceiling did "
        "not run is not compared (no interpolation).",
        "",
    ]
    if not cmp["levels"]:
        return [*head, cmp.get("note", "No level to compare."), ""]
    rows = [
        [_f(r["offered"], ",.0f"), _f(r["shipped_p50_ms"], ".0f"), _f(r["ceiling_p50_ms"], ".0f"),
         _f(r["excess_ms"], "+.0f"),
         {True: "PASS", False: "**FAIL**"}.get(r["passed"], r.get("note", "not compared"))]
        for r in cmp["levels"]
    ]  # fmt: skip
    return [*head, *_table(["offered rps", "shipped p50 ms", "ceiling p50 ms", "excess ms",
                            "result"], rows), ""]  # fmt: skip


def _workers_section(w: dict[str, Any] | None) -> list[str]:
    """1 vs 2 workers: max rps at p99 ≤ 50 ms, how busy the machine was there, the ratio."""
    if not w:
        return []
    rows = []
    for s in (w["one_worker"], w["two_workers"]):
        if s is None:
            continue
        shown = _f(s["max_rps_at_p99_50ms"], ",.0f")
        if s.get("ladder_exhausted"):
            shown += " (≥, ladder exhausted)"
        rows.append([s["variant"], str(s["workers"]), str(s["server_cpu"]), shown,
                     _f(s["p99_ms_at_max"], ".0f"), _f(s["server_cores_busy_at_max"], ".2f"),
                     _f(s["locust_cores_busy_at_max"], ".2f"),
                     _f(s["cores_busy_at_max"], ".2f")])  # fmt: skip
    cores = w.get("machine_cores")
    header = ["variant", "workers", "server cores", "max rps at p99 ≤ 50 ms", "p99 there (ms)",
              "server cores busy", "locust cores busy", "both"]  # fmt: skip
    return [
        "## Workers: 1 against 2 (no target)",
        "",
        *_table(header, rows),
        "",
        f"2 workers / 1: **{_f(w['ratio'], '.2f')}**"
        + (f" on a {cores}-core machine" if cores else "")
        + f". {w['note']}",
        "",
    ]


def _wrk_line(w: dict[str, Any]) -> str:
    if "error" in w:
        return f"wrk: {w['error']}"
    return (
        f"wrk ({w['threads']} thread, {w['connections']} connections, closed loop, "
        f"{w['duration_s']} s, one fixed full-catalog body): {_f(w['rps'], ',.0f')} rps, p50 "
        f"{_f(w['p50_ms'], '.2f')} ms, p99 {_f(w['p99_ms'], '.2f')} ms, non-2xx "
        f"{w['non_2xx']}."
    )


def render_plot(results: dict[str, Any], path: Path) -> None:
    """p50 (dashed) and p99 (solid) against offered load per variant, log y; achieved rps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    limit = float(results["load"]["p99_limit_ms"])
    stop = float(results["load"]["stop_p99_ms"])
    fig = Figure(figsize=(13, 5.4), dpi=110)
    FigureCanvasAgg(fig)
    ax_lat, ax_rps = fig.subplots(1, 2)
    colors = {"ceiling": "tab:gray", "naive": "tab:red", "student_fp32": "tab:orange",
              "shipped": "tab:blue", "shipped_2w": "tab:cyan"}  # fmt: skip
    top = 1.0
    for v in results["variants"]:
        c = colors.get(v["name"], "tab:green")
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
            ax_lat.scatter([a["offered_rps"]], [max(a["p99_ms"], 0.5)], marker="*", s=160,
                           color=c, zorder=4, label=f"{v['name']} p99 at 70% of max")  # fmt: skip
    for y, ls, label in ((limit, ":", f"{limit:g} ms"), (stop, "-.", f"{stop:g} ms (stop)")):
        ax_lat.axhline(y, color="black", linestyle=ls, linewidth=1, label=label)
    ax_lat.set_yscale("log")
    ax_lat.set_xscale("log")
    ax_lat.set_ylim(0.4, max(top * 1.5, stop * 2))
    ax_lat.set_xlabel("offered load (requests/s)")
    ax_lat.set_ylabel("latency (ms, log)")
    ax_lat.set_title("latency percentiles vs offered load")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=7, ncol=2)
    offered = [x["offered_rps"] for v in results["variants"] for x in v["levels"]] or [1.0]
    lo, lim = min(offered), max(offered)
    ax_rps.plot(
        [lo, lim],
        [lo, lim],
        color="black",
        linewidth=0.8,
        linestyle=":",
        label="achieved = offered",
    )
    ax_rps.set_xscale("log")
    ax_rps.set_yscale("log")
    ax_rps.set_xlabel("offered load (requests/s)")
    ax_rps.set_ylabel("achieved (requests/s)")
    ax_rps.set_title("throughput")
    ax_rps.grid(True, which="both", alpha=0.3)
    ax_rps.legend(fontsize=8)
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    for ax in (ax_lat, ax_rps):
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
    fig.suptitle(f"Serving on one core of {results['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
