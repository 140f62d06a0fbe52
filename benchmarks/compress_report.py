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

from benchmarks.harness.report import Results, dirty_note, fmt, table, targets_section
from benchmarks.harness.targets import Target, Verdict, ratio, target, verdict
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
TIMINGS = (
    "encoder_us_b1",
    "encoder_us_b32",
    "e2e_us_b1",
    "e2e_us_b32",
    "torch_us_b1",
    "torch_us_b32",
)
SHAPE = (
    "params",
    "encoder_params",
    "item_table_params",
    "encoder_flops",
    "model_bytes",
    "model_files",
    "metadata_files",
    "archive_bytes",
    "evaluated_with",
    "bits_per_item",
    "item_table",
)


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


def evaluate_targets(stages: list[dict[str, Any]], served_name: str) -> Verdict:
    """Issue 18's targets from the measured stage rows (means over seeds)."""
    by = {s["name"]: s for s in stages}
    served, teacher = by[served_name], by["teacher"]
    fp32_name = served_name.removesuffix("+int8")
    fp32, ce = by.get(fp32_name), by.get("ce_baseline")
    loss = None
    if fp32 is not None and fp32["ndcg@10"] > 0:
        loss = (fp32["ndcg@10"] - served["ndcg@10"]) / fp32["ndcg@10"]
    t: dict[str, Target] = {
        "served_ndcg@10_vs_sasrec+": target(
            served["ndcg@10"],
            TARGET_NDCG10,
            ">=",
            f"{served_name} NDCG@10 through the service, mean over seeds, vs the published "
            "SASRec+ at the same d=64 size (an equal-size comparison)",
        ),
        "served_ndcg@10_vs_ce_baseline": target(
            served["ndcg@10"],
            ce["ndcg@10"] if ce else float("inf"),
            ">=",
            f"{served_name} NDCG@10 (service) vs ce_baseline's mean (same shape, no teacher)",
        ),
        "model_size_ratio": target(
            ratio(teacher["model_bytes"], served["model_bytes"]),
            TARGET_SIZE_RATIO,
            ">=",
            f"teacher fp32 model bytes ({teacher['model_bytes']}) / {served_name} model bytes "
            f"({served['model_bytes']}), unpacked, what each needs to answer",
        ),
        "e2e_speedup_b1": target(
            ratio(teacher["e2e_us_b1"], served["e2e_us_b1"]),
            TARGET_E2E_B1,
            ">=",
            "teacher / served µs per whole answer (encode, score all items, top 10), batch 1, "
            "onnxruntime, 1 thread",
        ),
        "e2e_speedup_b32": target(
            ratio(teacher["e2e_us_b32"], served["e2e_us_b32"]),
            TARGET_E2E_B32,
            ">=",
            "the same per row at batch 32",
        ),
        "quantization_ndcg_loss": target(
            loss,
            TARGET_QUANT_LOSS,
            "<=",
            f"(NDCG@10 of {fp32_name} - NDCG@10 of {served_name}) / NDCG@10 of {fp32_name}, "
            "each scored as it would be served, means over seeds; positive = loss",
        ),
    }
    return verdict({**t, **compression_targets(by, served_name)})


def compression_targets(by: dict[str, dict[str, Any]], served_name: str) -> dict[str, Target]:
    """Issue 19's targets: bytes, the int8-rows speed, real pruning, batch independence."""
    served, student, pruned = by[served_name], by["student"], by.get("pruned")
    base = "pruned" if pruned else "student"
    rows = by.get(f"{base}+int8")
    check = served.get("batch_independence") or {}
    t: dict[str, Target] = {
        "served_model_bytes": target(
            served["model_bytes"],
            TARGET_SERVED_BYTES,
            "<=",
            f"{served_name} model bytes, unpacked (graph, item table, scales, codebooks)",
        ),
        "served_archive_bytes": target(
            served.get("archive_bytes"),
            TARGET_ARCHIVE_BYTES,
            "<=",
            f"{served_name} bundle archive (.tar.gz, vocabulary and metadata included)",
        ),
        "pruned_encoder_params": target(
            ratio(pruned["encoder_params"], student["encoder_params"]) if pruned else None,
            TARGET_PRUNED_PARAMS,
            "<=",
            "pruned / student encoder parameters (item table excluded)",
        ),
        "pruning_ndcg_loss": target(
            _loss(student["ndcg@10"], pruned["ndcg@10"]) if pruned else None,
            TARGET_PRUNE_LOSS,
            "<=",
            "(student - pruned) / student NDCG@10, fp32, means over seeds; positive = loss",
        ),
        "batch_independent_answers": target(
            check.get("identical_top10", 0) / check["users"] if check.get("users") else None,
            1.0,
            ">=",
            f"share of {check.get('users')} test users whose top 10 answered alone equals "
            f"their top 10 answered in batches of {check.get('batch_size')}",
        ),
    }
    for batch in ("b1", "b32"):
        key = f"e2e_us_{batch}"
        t[f"e2e_{batch}_vs_int8_rows"] = target(
            ratio(rows[key], served[key]) if rows else None,
            1.0,
            ">=",
            f"{base}+int8 / {served_name} µs per whole answer at {batch}: no slower than int8 rows",
        )
    return t


def _loss(before: float, after: float) -> float | None:
    return (before - after) / before if before > 0 else None


# --- markdown ------------------------------------------------------------------------------------
def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def duration(s: float) -> str:
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _mean_sd(s: dict[str, Any], key: str) -> str:
    sd = s.get(f"{key}_sd")
    return f"{s[key]:.4f}" + ("" if sd is None else f" ± {sd:.4f}")


def _accuracy_only_row(label: str, ndcg: str, hr: str) -> list[str]:
    """A stages-table row with only NDCG@10 and HR@10 (a baseline, a published model)."""
    return [label, *["-"] * 6, ndcg, "-", hr, *["-"] * 5]


def stage_rows(results: Results) -> list[list[str]]:
    served = results["served_stage"]
    pop = results["popularity"]
    rows = [
        _accuracy_only_row("popularity (baseline)", f"{pop['ndcg@10']:.4f}", f"{pop['hr@10']:.4f}")
    ]
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
                fmt(s.get("bits_per_item"), ".0f"),
                _mean_sd(s, "ndcg@10"),
                f"[{lo:.4f}, {hi:.4f}]",
                _mean_sd(s, "hr@10"),
                fmt(s["encoder_us_b1"], ".0f"),
                fmt(s["encoder_us_b32"], ".1f"),
                fmt(s["e2e_us_b1"], ".0f"),
                fmt(s["e2e_us_b32"], ".1f"),
                "service" if s["evaluated_with"] == "service" else "pipeline",
            ]
        )
    if results["references"]["applies_to_this_data"]:
        for r in results["references"]["models"]:
            ndcg, hr = f"*{r['ndcg@10']:.4f}*", f"*{r['hr@10']:.4f}*"
            rows.append(_accuracy_only_row(f"*{r['name']}*", ndcg, hr))
    return rows


STAGE_HEADER = [
    "stage",
    "seeds",
    "params",
    "encoder params",
    "encoder MFLOP",
    "model bytes",
    "bits / item",
    "NDCG@10 mean ± sd",
    "95% CI",
    "HR@10",
    "enc µs b1",
    "enc µs/row b32",
    "e2e µs b1",
    "e2e µs/row b32",
    "evaluated with",
]


def _header(results: Results) -> list[str]:
    """Command, wall time (and the reused teacher's), device, commit and data."""
    reuse = results.get("teacher_reused")
    wall = results["wall_seconds"]
    teacher = ", teacher trained in this run"
    if reuse:
        trained = reuse["train_seconds"]
        teacher = (
            f", teacher loaded from `{reuse['path']}` (trained in {duration(trained)} by the "
            f"same code: {duration(wall + trained)} with it)"
        )
    data = results["data"]
    return [
        f"# Compression benchmark: {results['dataset']}",
        "",
        f"Command: `{results['command']}`  ",
        f"Wall time: {duration(wall)} ({wall:.0f} s){teacher}; device `{results['device']}` "
        f"({results['device_name']}); CPU {results['cpu']}, {results['threads']} torch threads; "
        f"student seeds {results['seeds']}, teacher seed {results['teacher_seed']}  ",
        f"Commit: `{results['git_commit']}`{dirty_note(results)}",
        "",
        f"Data: `{data.get('source', data['path'])}`: {data.get('users', '?')} users, "
        f"{data.get('items', '?')} items, {data.get('interactions', '?')} interactions "
        f"(sha256 `{data['sha256'][:12]}…`).",
        "",
    ]


def _stages_section(results: Results) -> list[str]:
    out = [
        "## Stages",
        "",
        results["measurement_note"],
        "",
        *table(STAGE_HEADER, stage_rows(results)),
        "",
    ]
    if results["references"]["applies_to_this_data"]:
        source = results["references"]["source"]
        out += [
            f"*Italic rows: published, not measured here* ({source}). SASRec+ is d=64 like the "
            "student: an equal-size comparison.",
            "",
        ]
    return out


def _bytes_section(stages: list[dict[str, Any]]) -> list[str]:
    out = ["## What each stage needs to answer (unpacked bytes)", ""]
    for s in stages:
        files = ", ".join(f"{f} {_bytes(b)}" for f, b in s["model_files"].items())
        extra = ""
        if s.get("metadata_files"):
            meta = ", ".join(f"{f} {_bytes(b)}" for f, b in s["metadata_files"].items())
            extra = f"; metadata apart: {meta}; archive {_bytes(s.get('archive_bytes'))}"
        out.append(f"- {s['name']}: {_bytes(s['model_bytes'])} = {files}{extra}")
    return out


PAIRED_HEADER = ["a", "b", "seed", "mean a", "mean b", "b - a", "relative", "95% CI of b - a", "p"]


def _paired_row(t: dict[str, Any]) -> list[str]:
    lo, hi = t["ci95"]
    return [
        t["a"],
        t["b"],
        str(t["seed"]),
        f"{t['mean_a']:.4f}",
        f"{t['mean_b']:.4f}",
        f"{t['diff']:+.5f}",
        f"{t['relative']:+.2%}",
        f"[{lo:+.5f}, {hi:+.5f}]",
        f"{t['p_value']:.2g}",
    ]


def render_markdown(results: Results) -> str:
    stages = results["stages"]
    seeds = sorted({seed for s in stages for seed in s["seeds"]})
    per_seed = [[s["name"], *(_seed_value(s, x) for x in seeds)] for s in stages]
    out = [
        *_header(results),
        *_stages_section(results),
        *_bytes_section(stages),
        "",
        "## Per seed (NDCG@10)",
        "",
        *table(["stage", *(f"seed {x}" for x in seeds)], per_seed),
        "",
        "## Paired tests (per-user NDCG@10, b - a)",
        "",
        *table(PAIRED_HEADER, [_paired_row(t) for t in results["paired_tests"]]),
        "",
        "## Pruning",
        "",
        results["pruning"]["summary"],
        "",
        *_targets_section(results),
    ]
    return "\n".join(out)


def _seed_value(stage: dict[str, Any], seed: int) -> str:
    if seed not in stage["seeds"]:
        return "-"
    return f"{stage['ndcg@10_values'][stage['seeds'].index(seed)]:.4f}"


def _target_cells(name: str, t: Target) -> tuple[str, str]:
    """Losses as signed percentages, everything else to 4 significant digits."""
    value, threshold = t["value"], t["threshold"]
    if "loss" in name:
        return ("-" if value is None else f"{value:+.2%}"), f"{threshold:.0%}"
    return ("-" if value is None else f"{value:.4g}"), f"{threshold:.4g}"


def _targets_section(results: Results) -> list[str]:
    t = results["targets"]
    if t is None:
        return ["## Targets", "", results["targets_note"], ""]
    return targets_section(t, _target_cells, title="## Targets (issues 18 and 19, Amazon Beauty)")


# --- plot ----------------------------------------------------------------------------------------
COLORS = [
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
    "black",
    "gold",
]


def _plot_stages(results: Results, ax_size: Any, ax_lat: Any) -> None:
    """Each stage's NDCG@10 (± sd) against its model bytes and its e2e µs per row at b32;
    the served stage a star."""
    for i, s in enumerate(results["stages"]):
        served = s["name"] == results["served_stage"]
        style: dict[str, Any] = {
            "color": COLORS[i % len(COLORS)],
            "fmt": "*" if served else "o",
            "markersize": 14 if served else 7,
            "capsize": 3,
        }
        label = s["name"] + (" (served)" if served else "")
        y, sd = s["ndcg@10"], s["ndcg@10_sd"] or 0.0
        offset = (7, 7 if i % 2 == 0 else -13)
        for ax, x in ((ax_size, s["model_bytes"]), (ax_lat, s["e2e_us_b32"])):
            ax.errorbar([x], [y], yerr=[sd], label=label if ax is ax_size else None, **style)
            ax.annotate(s["name"], (x, y), textcoords="offset points", xytext=offset, fontsize=9)


def _plot_baselines(results: Results, ax_size: Any, ax_lat: Any) -> None:
    """Popularity's NDCG@10 and the published SASRec+ (where it applies) as lines."""
    lines = [("popularity (measured)", results["popularity"]["ndcg@10"], "-.")]
    if results["references"]["applies_to_this_data"]:
        lines += [(r["name"], r["ndcg@10"], "--") for r in results["references"]["models"][:1]]
    for ax in (ax_size, ax_lat):
        for name, y, ls in lines:
            label = f"{name}: {y:.4f}" if ax is ax_size else None
            ax.axhline(y, color="gray", linestyle=ls, linewidth=1, label=label)
        ax.set_xscale("log")
        ax.set_ylabel("NDCG@10 (test; mean ± sd over seeds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.12)


def render_plot(results: Results, path: Path) -> None:
    """NDCG@10 (mean ± sd over seeds) against model bytes and against e2e µs per row at b32."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.4), dpi=110)
    FigureCanvasAgg(fig)
    ax_size, ax_lat = fig.subplots(1, 2)
    _plot_stages(results, ax_size, ax_lat)
    _plot_baselines(results, ax_size, ax_lat)
    ax_size.set_xlabel("model bytes, unpacked (what the stage needs to answer)")
    ax_lat.set_xlabel("µs per answer per row at batch 32 (encode + score all + top 10, 1 thread)")
    ax_size.set_title("accuracy vs size")
    ax_lat.set_title("accuracy vs end-to-end time")
    handles, labels = ax_size.get_legend_handles_labels()
    ncol = min(len(labels), 4)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"Compression stages on {results['dataset']}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, format="png")
