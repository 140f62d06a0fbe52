"""The live-catalog benchmark's results (`benchmarks.catalog_live`): the fold-in figures
copied in, the targets (issue 20), the headline figures and the markdown report.

    results["targets"] = evaluate_targets(results)
    results = {**headline(results), **results}
    render_markdown(results)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.catalog_phases import VERSION
from benchmarks.harness.report import (
    Results,
    capacity_line,
    run_lines,
    table,
    targets_section,
)
from benchmarks.harness.targets import Target, Verdict, target, verdict

TARGET_PROPAGATION_S = 1.0
TARGET_NEW_ITEMS_S = 1.0
TARGET_HEAL_S = 5.0
FOLDIN_FILE = "catalog-foldin.json"
FOLDIN_COMMAND = "python -m benchmarks.foldin"
FOLDIN_PROVENANCE = ("dataset", "command", "git_commit", "git_dirty", "cpu")


# --- the fold-in figures ---------------------------------------------------------------------
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


# --- targets ---------------------------------------------------------------------------------
def _catalog_targets(u: dict[str, Any], n: dict[str, Any]) -> dict[str, Target]:
    return {
        "unavailable_propagation_s": target(
            u["unavailable_propagation_s_max"],
            TARGET_PROPAGATION_S,
            "<=",
            "admin answer → no probe names an unavailable item, slowest replica",
        ),
        "unavailable_leaks": target(
            u["unavailable_leaks"],
            0,
            "==",
            "load answers naming an unavailable item, started after the fleet was clean",
        ),
        "unavailable_failed": target(
            u["failed_requests"], 0, "==", "non-200 answers over the unavailable run"
        ),
        "new_items_propagation_s": target(
            n["new_items_propagation_s_max"],
            TARGET_NEW_ITEMS_S,
            "<=",
            "admin answer → a probe names a new item, slowest replica",
        ),
        "new_items_failed": target(
            n["failed_requests"], 0, "==", "non-200 answers over the new-items run"
        ),
    }


def _recovery_targets(f: dict[str, Any], late: dict[str, Any]) -> dict[str, Target]:
    return {
        "flush_failed": target(
            f["flush_failed_requests"], 0, "==", "non-200 answers over the flush run"
        ),
        "flush_heal_s": target(
            f["flush_heal_s"],
            TARGET_HEAL_S,
            "<=",
            "FLUSHALL → active key, archive and catalog back",
        ),
        "late_replica_ready": target(
            late.get("late_replica_ready_s") is not None,
            True,
            "==",
            "a replica started after the flush, no bootstrap, became ready on the fleet version",
        ),
    }


def evaluate_targets(r: Results) -> Verdict:
    return verdict(
        {
            **_catalog_targets(r["unavailable"], r["new_items"]),
            **_recovery_targets(r["flush"], r["late_replica"]),
        }
    )


def headline(results: Results) -> dict[str, Any]:
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


# --- markdown --------------------------------------------------------------------------------
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


def _header(r: Results) -> list[str]:
    return [
        "# Live-catalog benchmark: unavailable items, new items, a flushed Redis",
        "",
        *run_lines(r),
        f"Bundle: {r['bundle']['source']} ({r['bundle']['items']} items), served as "
        f"`{VERSION}`. Two replicas pinned to core {r['pinning']['replicas']} sharing one "
        f"Redis; locust on core {r['pinning']['locust']}, round-robin over the replicas. "
        "Propagation: from the admin call's answer to a replica's first round of direct "
        "probes that showed the change, given as its start-end (the target uses the end).",
        "",
        capacity_line(r),
        "",
    ]


def _catalog_rows(r: Results) -> list[list[str]]:
    """The unavailable and new-items phases."""
    u, n, w = r["unavailable"], r["new_items"], r["warmup"]
    leaks = u["leaks"]
    return [
        [
            f"warm-up: answers naming one of the {u['items']:,} chosen items",
            f"{w['answers_naming_chosen']:,} of {w['answers']:,}",
        ],
        ["unavailable: admin call (r1)", f"{u['call']['status']}, {u['call']['seconds']} s"],
        ["unavailable: propagation per replica", _per_replica(u["per_replica"])],
        [
            "unavailable: answers naming them before the call / while propagating",
            f"{u['answers_naming_before']:,} / {u['answers_naming_while_propagating']:,}",
        ],
        [
            f"unavailable: leaks (answers after the fleet was clean, {leaks['window_s']} s, "
            f"{leaks['answers_in_window']:,} answers)",
            str(u["unavailable_leaks"]),
        ],
        ["unavailable run: requests / failed", f"{u['requests']:,} / {u['failed_requests']}"],
        ["available again (r2): slowest replica showing them again", f"{u['restored_s_max']} s"],
        [
            f"new items: admin call (r2, {n['body_bytes']:,} bytes)",
            f"{n['call']['status']}, {n['call']['seconds']} s",
        ],
        ["new items: propagation per replica", _per_replica(n["per_replica"])],
        [
            "new items: load answers naming one, after propagation",
            f"{n['load_answers_naming_new_after']:,} of {n['load_answers_after']:,}",
        ],
        ["new-items run: requests / failed", f"{n['requests']:,} / {n['failed_requests']}"],
    ]


def _recovery_rows(r: Results) -> list[list[str]]:
    """The flush and the late replica, and the fold-in figures when they were copied in."""
    f, late, back = r["flush"], r["late_replica"], r["flush"]["back_s"]
    heals = zip(f["heals_before"], f["heals_after"], strict=True)
    rows = [
        ["flush run: requests / failed", f"{f['requests']:,} / {f['flush_failed_requests']}"],
        [
            "flush: fleet lock taken (write-back began) / active key / archive / catalog back",
            f"{back.get('heal_lock')} / {back['active_key']} / {back['archive']} / "
            f"{back['catalog']} s",
        ],
        [
            "flush: heals per replica (before → after)",
            ", ".join(f"r{i + 1} {a} → {b}" for i, (a, b) in enumerate(heals)),
        ],
        [
            f"late replica (no bootstrap): /readyz 200 / serving `{VERSION}`",
            f"{late.get('ready_s')} / {late.get('serving_s')} s",
        ],
        ["late replica: probe names a new item", str(late.get("probe_names_new_items"))],
    ]
    fold = r.get("foldin")
    if fold:
        rows.append([f"fold-in ({fold['note']})", foldin_metrics(fold) or "no metrics"])
    return rows


def render_markdown(r: Results) -> str:
    rows = _catalog_rows(r) + _recovery_rows(r)
    out = [*_header(r), *table(["measurement", "value"], rows), "", *targets_section(r["targets"])]
    return "\n".join(out)
