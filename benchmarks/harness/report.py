"""Markdown for the benchmark reports, and the results written to disk.

lines = table(["variant", "rps"], [["shipped", fmt(1234.5, ",.0f")]])
lines += targets_section(results["targets"])
write_results(out, "serve", results, "\\n".join(lines))   # serve.json, serve.md
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.targets import Target, Verdict, judged

TARGET_HEADER = ["target", "measured as", "value", "required", "result"]
# A benchmark's results document, as it writes it to JSON and a report reads it back.
Results = Mapping[str, Any]


def fmt(x: Any, spec: str = ".1f") -> str:
    """`x` formatted with `spec`, "-" for None (not measured)."""
    return "-" if x is None else format(x, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def pass_fail(passed: bool) -> str:
    return "PASS" if passed else "**FAIL**"


def dirty_note(results: Results) -> str:
    """ " (uncommitted changes)" when the run's working tree was dirty."""
    return " (uncommitted changes)" if results.get("git_dirty") else ""


def run_lines(r: Results) -> list[str]:
    """A report's opening lines on how it was made: the command, then the commit, CPU and
    wall time (`benchmarks.provenance.run_provenance` and `wall_seconds`)."""
    return [
        f"Command: `{r['command']}`  ",
        f"Commit: `{r['git_commit']}`{dirty_note(r)}; CPU {r['cpu']} ({r['cpu_count']} cores); "
        f"wall time {r['wall_seconds']:.0f} s  ",
    ]


def capacity_line(r: Results) -> str:
    """How a fleet benchmark chose its load: the capacity probe and the share of it offered."""
    c = r["capacity"]
    return (
        f"Capacity probe: {c['achieved_rps']:.0f} rps achieved at {c['offered_rps']:.0f} offered"
        + (" (locust's core was the limit)" if c.get("locust_limited") else "")
        + f"; load for the runs below: {r['load_rps']:.0f} rps ({r['load_fraction']:.0%})."
    )


def _plain(name: str, t: Target) -> tuple[str, str]:
    return str(t["value"]), str(t["threshold"])


def targets_table(
    targets: Verdict,
    shown: Callable[[str, Target], tuple[str, str]] = _plain,
) -> list[str]:
    """One row per target of a `verdict`; `shown(name, target)` gives its (value, threshold)
    cells (default: as they are)."""
    rows = []
    for name, t in judged(targets).items():
        value, threshold = shown(name, t)
        rows.append([name, t["what"], value, f"{t['op']} {threshold}", pass_fail(t["passed"])])
    return table(TARGET_HEADER, rows)


def all_targets_line(targets: Verdict) -> str:
    return f"All targets: {'PASS' if targets['all_passed'] else 'FAIL'}."


def targets_section(
    targets: Verdict,
    shown: Callable[[str, Target], tuple[str, str]] = _plain,
    *,
    title: str = "## Targets",
) -> list[str]:
    """The report's targets: a heading, the table and the overall result."""
    return [title, "", *targets_table(targets, shown), "", all_targets_line(targets), ""]


def write_results(
    out: Path, stem: str, results: Results, markdown: str, *, ensure_ascii: bool = True
) -> list[Path]:
    """`<stem>.json` and `<stem>.md` under `out` (created); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    text = json.dumps(results, indent=2, ensure_ascii=ensure_ascii) + "\n"
    json_path.write_text(text, encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return [json_path, md_path]
