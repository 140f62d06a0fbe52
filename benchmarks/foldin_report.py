"""The fold-in benchmark's report (`benchmarks.foldin`): catalog-foldin.json as markdown.

render_markdown(json.loads(Path("benchmarks/results/catalog-foldin.json").read_text()))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.harness.report import Results

K = 10  # the cut-off of every metric of the fold-in benchmark


def _name(s: dict[str, Any]) -> str:
    if s["method"] == "lsq":
        return f"least squares (ridge {s['ridge']:g}, target rank {s['target_rank']})"
    return f"softmax (l2 {s['l2']:g})"


def _names(r: Results) -> dict[str, str]:
    """A table label for every ranking of `by_events`: each method's two choices (its
    default marked), then the bundle alone."""
    names: dict[str, str] = {}
    for method, m in r["methods"].items():
        default = " **default**" if method == r["chosen"]["method"] else ""
        names[method] = f"{_name(m['chosen'])}{default}"
        names[f"{method}_held_out_choice"] = f"{_name(m['held_out_choice'])}, held-out choice"
    names["bundle"] = "bundle alone"
    return names


def _intro(r: Results) -> list[str]:
    """What was held out, what got a vector, and how the answers were made."""
    b = r["bundle"]
    return [
        f"# Item fold-in: {r['dataset']}",
        "",
        f"{r['held_out_items']:,} items held out ({r['held_out_share']:.0%} of "
        f"{r['items']:,}, drawn uniformly among items with seed {r['seed']}) and removed "
        f"from the data; the bundle (`{b['settings']['recipe']}` student shape, plain "
        f"cross-entropy, {b['epochs']} epochs, static INT8) never saw them. "
        f"{r['held_out_items_in_training_period']:,} of them occur in the training "
        f"period; {r['held_out_items_with_vector']:,} after a known item, and got a vector "
        f"({r['usable_occurrences']:,} such occurrences, with those of "
        f"{r['other_items_with_vector']:,} items only users dropped from the bundle's data "
        f"had). The softmax method's negatives: {r['negative_positions']:,} positions "
        f"sampled from those whose next item is known, each weighing "
        f"{r['negative_weight']:.1f}. Test events whose target is held out: "
        f"{r['test_events']:,} ({r['test_events_with_vector']:,} of them with a vector); "
        f"other test events: {r['test_known_events']:,}.",
        "",
        f"Answers through the service (`load_model`, `encode_vectors`, `with_catalog`, "
        f"`recommend_batch`), top {K}; 95% bootstrap intervals over events. Per method: the "
        f"setting chosen on all validation events, and the one chosen on the held-out-target "
        f'validation events alone ("held-out choice"); the default is the method whose '
        f"choice is best on all validation events.",
        "",
    ]


def _tables(r: Results) -> list[str]:
    """The held-out-target events per ranking, then every ranking by kind of test event."""
    names = _names(r)
    ranked = [n for n in names if n != "bundle"]
    return [
        "Test events whose target is held out:",
        "",
        f"| ranking | HR@{K} | 95% CI | NDCG@{K} | 95% CI |",
        "|---|---|---|---|---|",
        *(_row(names[n], r["by_events"][n], "held_out_targets_") for n in ranked),
        _row("popularity (training counts)", r, "popularity_"),
        _row("bundle alone", r, "bundle_"),
        "",
        f"What the new items cost the other answers: NDCG@{K} by test event (the bundle alone "
        f"has {r['held_out_share']:.0%} fewer items to rank known targets against), and the "
        f"share of all test answers' slots that held-out items take:",
        "",
        "| ranking | held-out targets | known targets | all events | new-item slots |",
        "|---|---|---|---|---|",
        *(_by_events_row(names[n], r["by_events"][n]) for n in names),
        "",
    ]


def _method_lines(r: Results) -> list[str]:
    """Softmax against least squares, when both ran."""
    lines = []
    for kind, label in (("held_out_targets", "held-out-target"), ("all", "all")):
        test = r.get(f"softmax_vs_lsq_{kind}_ndcg@{K}")
        if test:
            lo, hi = test["ci95"]
            lines.append(
                f"Softmax minus least squares (each chosen on all validation events), NDCG@{K} "
                f"on {label} test events: {test['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
                f"p = {test['p_value']:.3g}."
            )
            lines.append("")
    return lines


def render_markdown(r: Results) -> str:
    trained = (
        "reused" if r["bundle"]["reused"] else f"trained in {r['bundle']['train_seconds']:.0f} s"
    )
    lines = [
        *_intro(r),
        *_tables(r),
        *_method_lines(r),
        f"Validation NDCG@{K} on all events (the held-out-target events and a sample of the "
        f"others, weighted to their numbers: {r['valid_events']:,} and "
        f"{r['valid_known_events']:,}); in brackets: on the held-out-target events alone.",
        "",
        *_grid_table(r["grid"]),
        "",
        f"CPU: {r['cpu']}; wall time {r['wall_seconds']:.0f} s (bundle {trained}); "
        f"commit {r['git_commit']}{' (dirty)' if r['git_dirty'] else ''}.",
        "",
    ]
    return "\n".join(lines)


def _row(name: str, values: Results, prefix: str) -> str:
    cells = [name]
    for metric in (f"hr@{K}", f"ndcg@{K}"):
        lo, hi = values[f"{prefix}{metric}_ci95"]
        cells += [f"{values[prefix + metric]:.4f}", f"[{lo:.4f}, {hi:.4f}]"]
    return "| " + " | ".join(cells) + " |"


def _by_events_row(name: str, values: Results) -> str:
    cells = [name]
    for kind in ("held_out_targets_", "known_targets_", "all_"):
        lo, hi = values[f"{kind}ndcg@{K}_ci95"]
        cells.append(f"{values[f'{kind}ndcg@{K}']:.4f} [{lo:.4f}, {hi:.4f}]")
    cells.append(f"{values['new_item_slot_share']:.1%}")
    return "| " + " | ".join(cells) + " |"


def _cell(g: dict[str, Any]) -> str:
    return f"{g[f'valid_all_ndcg@{K}']:.4f} ({g[f'valid_ndcg@{K}']:.4f})"


def _grid_table(grid: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    lsq = [g for g in grid if g["method"] == "lsq"]
    if lsq:
        ridges = sorted({g["ridge"] for g in lsq})
        lines += [
            "Least squares:",
            "",
            f"| target rank \\ ridge | {' | '.join(f'{x:g}' for x in ridges)} |",
            "|---|" + "---|" * len(ridges),
        ]
        for rank in sorted({g["target_rank"] for g in lsq}):
            cells = {g["ridge"]: g for g in lsq if g["target_rank"] == rank}
            lines.append(f"| {rank} | " + " | ".join(_cell(cells[x]) for x in ridges) + " |")
    softmax = sorted((g for g in grid if g["method"] == "softmax"), key=lambda g: g["l2"])
    if softmax:
        lines += [
            *([""] if lines else []),
            "Softmax:",
            "",
            "| l2 | " + " | ".join(f"{g['l2']:g}" for g in softmax) + " |",
            "|---|" + "---|" * len(softmax),
            f"| NDCG@{K} | " + " | ".join(_cell(g) for g in softmax) + " |",
            "| fit (s) | " + " | ".join(f"{g['fit_seconds']:.0f}" for g in softmax) + " |",
        ]
    return lines
