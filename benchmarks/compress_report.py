"""The compression benchmark's results: stages summarised over seeds, paired tests, targets,
and the same as markdown and a plot.

    stages = aggregate(runs, ranks)          # one row per stage, mean ± sd over seeds
    tests = paired_tests(ranks, served, fp32, "ce_baseline")
    targets = evaluate_targets(stages, served)   # Beauty's targets (issue 18), measured only

A stage's interval is a bootstrap over test users of the per-user NDCG@10 averaged over the
seeds, so it shows the test-set sampling of the mean the table reports; `sd` is the spread
over seeds. Relative changes are (new - old) / old: negative is a loss.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.stats import bootstrap_ci, gains, paired_test, seed_summary

I64 = npt.NDArray[np.int64]
Ranks = dict[str, dict[int, I64]]  # stage -> seed -> per-user ranks

# --- targets (issue 18), set for Amazon Beauty only ---------------------------------------------
TARGET_NDCG10 = 0.0327  # the published SASRec+ at d=64 (Klenitskiy & Vasilev, RecSys 2023)
TARGET_SIZE_RATIO = 15.0
TARGET_E2E_B1 = 8.0
TARGET_E2E_B32 = 5.0
TARGET_QUANT_LOSS = 0.01
# --- targets (issue 19), Beauty only ------------------------------------------------------------
TARGET_SERVED_BYTES = 1_000_000
TARGET_ARCHIVE_BYTES = 1_500_000
TARGET_PRUNED_PARAMS = 0.7  # pruned encoder_params / student's
TARGET_PRUNE_LOSS = 0.01

METRICS = ("hr@10", "ndcg@10", "mrr@10")
TIMINGS = ("encoder_us_b1", "encoder_us_b32", "e2e_us_b1", "e2e_us_b32", "torch_us_b1",
           "torch_us_b32")  # fmt: skip
SHAPE = ("params", "encoder_params", "item_table_params", "encoder_flops", "model_bytes",
         "model_files", "metadata_files", "archive_bytes", "evaluated_with", "bits_per_item",
         "item_table")  # fmt: skip


def seed_mean_gains(ranks: dict[int, I64]) -> npt.NDArray[np.float64]:
    """Each user's NDCG@10 averaged over the seeds."""
    out: npt.NDArray[np.float64] = np.mean([gains(r, 10, "ndcg") for r in ranks.values()], axis=0)
    return out


def aggregate(runs: Sequence[Sequence[dict[str, Any]]], ranks: Ranks) -> list[dict[str, Any]]:
    """One row per stage (in pipeline order) from the per-seed records."""
    order: list[str] = []
    for run in runs:
        order += [r["name"] for r in run if r["name"] not in order]
    out = []
    for name in order:
        recs = [r for run in runs for r in run if r["name"] == name]
        row: dict[str, Any] = {"name": name, "seeds": [r["seed"] for r in recs]}
        row.update({k: recs[0][k] for k in SHAPE if k in recs[0]})
        for key in TIMINGS:
            values = [r[key] for r in recs if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        for key in METRICS:
            summary = seed_summary([r[key] for r in recs])
            row[key], row[f"{key}_sd"] = summary["mean"], summary["sd"]
            row[f"{key}_values"] = summary["values"]
        lo, hi = bootstrap_ci(seed_mean_gains(ranks[name]))
        row["ndcg@10_ci95"] = [lo, hi]
        checks = [r["batch_independence"] for r in recs if "batch_independence" in r]
        if checks:  # summed over the seeds' bundles
            row["batch_independence"] = {
                "users": sum(c["users"] for c in checks),
                "identical_top10": sum(c["identical_top10"] for c in checks),
                "batch_size": checks[0]["batch_size"],
            }
        train = [r["train_seconds"] for r in recs if r.get("train_seconds") is not None]
        row["train_seconds"] = statistics.mean(train) if train else None
        out.append(row)
    return out


def paired_tests(ranks: Ranks, served: str, *others: str) -> list[dict[str, Any]]:
    """Served stage against each of `others`, per seed and on the seed-averaged gains."""
    out = []
    for other in others:
        if other not in ranks:
            continue
        seeds = sorted(set(ranks[served]) & set(ranks[other]))
        for seed in seeds:
            a, b = gains(ranks[other][seed], 10), gains(ranks[served][seed], 10)
            out.append({"a": other, "b": served, "seed": seed, **paired_test(a, b, seed=seed)})
        if len(seeds) > 1:
            a = seed_mean_gains({s: ranks[other][s] for s in seeds})
            b = seed_mean_gains({s: ranks[served][s] for s in seeds})
            out.append({"a": other, "b": served, "seed": "mean", **paired_test(a, b)})
    return out


def _target(value: float | None, threshold: float, op: str, what: str) -> dict[str, Any]:
    passed = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    return {"value": value, "threshold": threshold, "op": op, "passed": passed, "what": what}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def evaluate_targets(stages: list[dict[str, Any]], served_name: str) -> dict[str, Any]:
    """Issue 18's targets from the measured stage rows (means over seeds)."""
    by = {s["name"]: s for s in stages}
    served, teacher = by[served_name], by["teacher"]
    fp32_name = served_name.removesuffix("+int8")
    fp32, ce = by.get(fp32_name), by.get("ce_baseline")
    loss = None
    if fp32 is not None and fp32["ndcg@10"] > 0:
        loss = (fp32["ndcg@10"] - served["ndcg@10"]) / fp32["ndcg@10"]
    t = {
        "served_ndcg@10_vs_sasrec+": _target(
            served["ndcg@10"], TARGET_NDCG10, ">=",
            f"{served_name} NDCG@10 through the service, mean over seeds, vs the published "
            "SASRec+ at the same d=64 size (an equal-size comparison)",
        ),
        "served_ndcg@10_vs_ce_baseline": _target(
            served["ndcg@10"], ce["ndcg@10"] if ce else float("inf"), ">=",
            f"{served_name} NDCG@10 (service) vs ce_baseline's mean (same shape, no teacher)",
        ),
        "model_size_ratio": _target(
            _ratio(teacher["model_bytes"], served["model_bytes"]), TARGET_SIZE_RATIO, ">=",
            f"teacher fp32 model bytes ({teacher['model_bytes']}) / {served_name} model bytes "
            f"({served['model_bytes']}), unpacked, what each needs to answer",
        ),
        "e2e_speedup_b1": _target(
            _ratio(teacher["e2e_us_b1"], served["e2e_us_b1"]), TARGET_E2E_B1, ">=",
            "teacher / served µs per whole answer (encode, score all items, top 10), batch 1, "
            "onnxruntime, 1 thread",
        ),
        "e2e_speedup_b32": _target(
            _ratio(teacher["e2e_us_b32"], served["e2e_us_b32"]), TARGET_E2E_B32, ">=",
            "the same per row at batch 32",
        ),
        "quantization_ndcg_loss": _target(
            loss, TARGET_QUANT_LOSS, "<=",
            f"(NDCG@10 of {fp32_name} - NDCG@10 of {served_name}) / NDCG@10 of {fp32_name}, "
            "each scored as it would be served, means over seeds; positive = loss",
        ),
    }  # fmt: skip
    t.update(compression_targets(by, served_name))
    return {"all_passed": all(v["passed"] for v in t.values()), **t}


def compression_targets(by: dict[str, dict[str, Any]], served_name: str) -> dict[str, Any]:
    """Issue 19's targets: bytes, the int8-rows speed, real pruning, batch independence."""
    served, student, pruned = by[served_name], by["student"], by.get("pruned")
    base = "pruned" if pruned else "student"
    rows = by.get(f"{base}+int8")
    check = served.get("batch_independence") or {}
    t = {
        "served_model_bytes": _target(
            served["model_bytes"], TARGET_SERVED_BYTES, "<=",
            f"{served_name} model bytes, unpacked (graph, item table, scales, codebooks)",
        ),
        "served_archive_bytes": _target(
            served.get("archive_bytes"), TARGET_ARCHIVE_BYTES, "<=",
            f"{served_name} bundle archive (.tar.gz, vocabulary and metadata included)",
        ),
        "pruned_encoder_params": _target(
            _ratio(pruned["encoder_params"], student["encoder_params"]) if pruned else None,
            TARGET_PRUNED_PARAMS, "<=", "pruned / student encoder parameters (item table excluded)",
        ),
        "pruning_ndcg_loss": _target(
            _loss(student["ndcg@10"], pruned["ndcg@10"]) if pruned else None,
            TARGET_PRUNE_LOSS, "<=",
            "(student - pruned) / student NDCG@10, fp32, means over seeds; positive = loss",
        ),
        "batch_independent_answers": _target(
            check.get("identical_top10", 0) / check["users"] if check.get("users") else None,
            1.0, ">=",
            f"share of {check.get('users')} test users whose top 10 answered alone equals "
            f"their top 10 answered in batches of {check.get('batch_size')}",
        ),
    }  # fmt: skip
    for batch in ("b1", "b32"):
        key = f"e2e_us_{batch}"
        t[f"e2e_{batch}_vs_int8_rows"] = _target(
            _ratio(rows[key], served[key]) if rows else None,
            1.0,
            ">=",
            f"{base}+int8 / {served_name} µs per whole answer at {batch}: no slower than int8 rows",
        )
    return t


def _loss(before: float, after: float) -> float | None:
    return (before - after) / before if before > 0 else None


# --- markdown ------------------------------------------------------------------------------------
def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def duration(s: float) -> str:
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _mean_sd(s: dict[str, Any], key: str) -> str:
    sd = s.get(f"{key}_sd")
    return f"{s[key]:.4f}" + ("" if sd is None else f" ± {sd:.4f}")


def stage_rows(results: dict[str, Any]) -> list[list[str]]:
    served = results["served_stage"]
    pop = results["popularity"]
    rows = [["popularity (baseline)", "-", "-", "-", "-", "-", "-", f"{pop['ndcg@10']:.4f}", "-",
             f"{pop['hr@10']:.4f}"] + ["-"] * 5]  # fmt: skip
    for s in results["stages"]:
        name = f"**{s['name']}** (served)" if s["name"] == served else s["name"]
        lo, hi = s["ndcg@10_ci95"]
        rows.append(
            [
                name,
                str(len(s["seeds"])),
                f"{s['params']:,}",
                f"{s['encoder_params']:,}",
                f"{s['encoder_flops'] / 1e6:.2f}",
                _bytes(s["model_bytes"]),
                _f(s.get("bits_per_item"), ".0f"),
                _mean_sd(s, "ndcg@10"),
                f"[{lo:.4f}, {hi:.4f}]",
                _mean_sd(s, "hr@10"),
                _f(s["encoder_us_b1"], ".0f"),
                _f(s["encoder_us_b32"], ".1f"),
                _f(s["e2e_us_b1"], ".0f"),
                _f(s["e2e_us_b32"], ".1f"),
                "service" if s["evaluated_with"] == "service" else "pipeline",
            ]
        )
    if results["references"]["applies_to_this_data"]:
        for r in results["references"]["models"]:
            rows.append([f"*{r['name']}*", "-", "-", "-", "-", "-", "-",
                         f"*{r['ndcg@10']:.4f}*", "-", f"*{r['hr@10']:.4f}*"] + ["-"] * 5)  # fmt: skip
    return rows


STAGE_HEADER = ["stage", "seeds", "params", "encoder params", "encoder MFLOP", "model bytes",
                "bits / item", "NDCG@10 mean ± sd", "95% CI", "HR@10", "enc µs b1", "enc µs/row b32",
                "e2e µs b1", "e2e µs/row b32", "evaluated with"]  # fmt: skip


def render_markdown(results: dict[str, Any]) -> str:
    stages = results["stages"]
    reuse = results.get("teacher_reused")
    wall = results["wall_seconds"]
    out = [
        f"# Compression benchmark: {results['dataset']}",
        "",
        f"Command: `{results['command']}`  ",
        f"Wall time: {duration(wall)} ({wall:.0f} s)"
        + (
            f", teacher loaded from `{reuse['path']}` (trained in {duration(reuse['train_seconds'])}"
            f" by the same code: {duration(wall + reuse['train_seconds'])} with it)"
            if reuse
            else ", teacher trained in this run"
        )
        + f"; device `{results['device']}` ({results['device_name']}); CPU {results['cpu']}, "
        f"{results['threads']} torch threads; student seeds {results['seeds']}, teacher seed "
        f"{results['teacher_seed']}  ",
        f"Commit: `{results['git_commit']}`"
        + (" (uncommitted changes)" if results["git_dirty"] else ""),
        "",
        f"Data: `{results['data'].get('source', results['data']['path'])}`: "
        f"{results['data'].get('users', '?')} users, {results['data'].get('items', '?')} items, "
        f"{results['data'].get('interactions', '?')} interactions "
        f"(sha256 `{results['data']['sha256'][:12]}…`).",
        "",
        "## Stages",
        "",
        results["measurement_note"],
        "",
        *_table(STAGE_HEADER, stage_rows(results)),
        "",
    ]
    if results["references"]["applies_to_this_data"]:
        out += [f"*Italic rows: published, not measured here* ({results['references']['source']})."
                " SASRec+ is d=64 like the student: an equal-size comparison.", ""]  # fmt: skip
    out += ["## What each stage needs to answer (unpacked bytes)", ""]
    for s in stages:
        files = ", ".join(f"{f} {_bytes(b)}" for f, b in s["model_files"].items())
        extra = ""
        if s.get("metadata_files"):
            meta = ", ".join(f"{f} {_bytes(b)}" for f, b in s["metadata_files"].items())
            extra = f"; metadata apart: {meta}; archive {_bytes(s.get('archive_bytes'))}"
        out.append(f"- {s['name']}: {_bytes(s['model_bytes'])} = {files}{extra}")
    out += ["", "## Per seed (NDCG@10)", ""]
    seeds = sorted({seed for s in stages for seed in s["seeds"]})
    out += _table(
        ["stage", *(f"seed {x}" for x in seeds)],
        [[s["name"], *(_seed_value(s, x) for x in seeds)] for s in stages],
    )
    out += ["", "## Paired tests (per-user NDCG@10, b - a)", ""]
    out += _table(
        ["a", "b", "seed", "mean a", "mean b", "b - a", "relative", "95% CI of b - a", "p"],
        [[t["a"], t["b"], str(t["seed"]), f"{t['mean_a']:.4f}", f"{t['mean_b']:.4f}",
          f"{t['diff']:+.5f}", f"{t['relative']:+.2%}",
          f"[{t['ci95'][0]:+.5f}, {t['ci95'][1]:+.5f}]", f"{t['p_value']:.2g}"]
         for t in results["paired_tests"]],
    )  # fmt: skip
    out += ["", "## Pruning", "", results["pruning"]["summary"], ""]
    out += _targets_section(results)
    return "\n".join(out)


def _seed_value(stage: dict[str, Any], seed: int) -> str:
    if seed not in stage["seeds"]:
        return "-"
    return f"{stage['ndcg@10_values'][stage['seeds'].index(seed)]:.4f}"


def _targets_section(results: dict[str, Any]) -> list[str]:
    t = results["targets"]
    if t is None:
        return ["## Targets", "", results["targets_note"], ""]
    rows = []
    for key, v in t.items():
        if key == "all_passed":
            continue
        val = v["value"]
        shown = "-" if val is None else (f"{val:+.2%}" if "loss" in key else f"{val:.4g}")
        thr = f"{v['threshold']:.0%}" if "loss" in key else f"{v['threshold']:.4g}"
        rows.append(
            [key, v["what"], shown, f"{v['op']} {thr}", "PASS" if v["passed"] else "**FAIL**"]
        )
    return [
        "## Targets (issues 18 and 19, Amazon Beauty)",
        "",
        *_table(["target", "measured as", "value", "required", "result"], rows),
        "",
        f"All targets: {'PASS' if t['all_passed'] else 'FAIL'}.",
        "",
    ]


# --- plot ----------------------------------------------------------------------------------------
def render_plot(results: dict[str, Any], path: Path) -> None:
    """NDCG@10 (mean ± sd over seeds) against model bytes and against e2e µs per row at b32."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.4), dpi=110)
    FigureCanvasAgg(fig)
    ax_size, ax_lat = fig.subplots(1, 2)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
              "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "gold"]  # fmt: skip
    for i, s in enumerate(results["stages"]):
        served = s["name"] == results["served_stage"]
        style: dict[str, Any] = {"color": colors[i % len(colors)], "fmt": "*" if served else "o",
                                 "markersize": 14 if served else 7, "capsize": 3}  # fmt: skip
        label = s["name"] + (" (served)" if served else "")
        for ax, x in ((ax_size, s["model_bytes"]), (ax_lat, s["e2e_us_b32"])):
            ax.errorbar([x], [s["ndcg@10"]], yerr=[s["ndcg@10_sd"] or 0.0],
                        label=label if ax is ax_size else None, **style)  # fmt: skip
            ax.annotate(s["name"], (x, s["ndcg@10"]), textcoords="offset points",
                        xytext=(7, 7 if i % 2 == 0 else -13), fontsize=9)  # fmt: skip
    lines = [("popularity (measured)", results["popularity"]["ndcg@10"], "-.")]
    if results["references"]["applies_to_this_data"]:
        lines += [(r["name"], r["ndcg@10"], "--") for r in results["references"]["models"][:1]]
    for ax in (ax_size, ax_lat):
        for name, y, ls in lines:
            ax.axhline(y, color="gray", linestyle=ls, linewidth=1,
                       label=f"{name}: {y:.4f}" if ax is ax_size else None)  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylabel("NDCG@10 (test; mean ± sd over seeds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.12)
    ax_size.set_xlabel("model bytes, unpacked (what the stage needs to answer)")
    ax_lat.set_xlabel("µs per answer per row at batch 32 (encode + score all + top 10, 1 thread)")
    ax_size.set_title("accuracy vs size")
    ax_lat.set_title("accuracy vs end-to-end time")
    handles, labels = ax_size.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(f"Compression stages on {results['dataset']}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, format="png")
