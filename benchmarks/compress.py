"""Compression benchmark: the whole pipeline on a real data set, every stage measured alike.

    make bench-compress DATA=../shared/data/amazon-beauty.txt
    python -m benchmarks.compress --data ../shared/data/amazon-beauty.txt \\
        [--seeds 3] [--teacher benchmarks/work/amazon-beauty/teacher-seed0.pt] \\
        [--out benchmarks/results] [--recipe beauty|demo] \\
        [--device cpu|cuda] [--set teacher_epochs=10 --set prune_ratio=0.3 ...]

Trains one teacher (or loads one an earlier run saved, `--teacher`), then for each of
`--seeds` seeds runs the student side with `models.compress.run_compress` (distil, prune when
the recipe prunes, quantize, bundle) and trains `ce_baseline`, the student's exact shape on
plain cross-entropy with the same epoch budget. Every stage is measured the same way
(`benchmarks.compress_measure`: model bytes per file, encoder and end-to-end µs in one
runtime and thread, encoder parameters and FLOPs, per-user ranks); the served stage's
accuracy comes from the service's own loader and request path. Writes, under `--out`:

    compress-<dataset>.json        stages (mean ± sd over seeds, bootstrap interval), every
                                   seed's records, paired tests, targets (Beauty only),
                                   provenance
    compress-<dataset>.md          the same as tables
    compress-<dataset>.png         NDCG@10 against model bytes and against e2e µs/row
    compress-<dataset>-ranks.npz   per-user ranks of every stage and seed

`<dataset>` is the data file's stem (`amazon-beauty`). Bundles, the teacher checkpoint and
run_compress's own reports go to `--work` (default `benchmarks/work/`, git-ignored).

The recipes and `--set` are `benchmarks.compress_recipes`; one seed's student side is
`benchmarks.compress_seeds`; the results' tables, targets and plot `benchmarks.compress_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.compress_measure import TIMING_ROUNDS, time_together, timing_inputs
from benchmarks.compress_recipes import (
    DEFAULT_RECIPE,
    RECIPES,
    build_config,
    parse_sets,
    parse_variants,
)
from benchmarks.compress_report import (
    Ranks,
    aggregate,
    duration,
    evaluate_targets,
    paired_tests,
    render_markdown,
    render_plot,
)
from benchmarks.compress_seeds import Seeds, run_seeds, teacher_for
from benchmarks.harness.log import logger
from benchmarks.harness.report import Results
from benchmarks.provenance import GitState, command_line, cpu_model, git_state
from bundle.io import sha256_file
from models.compress import CompressConfig, prepare_data
from models.readers import DataFormatError

log = logger("bench")

# --- published references --------------------------------------------------------------------
# Klenitskiy & Vasilev, RecSys 2023, on exactly ../shared/data/amazon-beauty.txt
# (leave-one-out, full ranking, seen items removed); see ../shared/data/README.md.
BEAUTY_SHA256 = "f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49"
BEAUTY_SOURCE = (
    "Klenitskiy & Vasilev, 'Turning Dross Into Gold Loss: is BERT4Rec really better than "
    "SASRec?', RecSys 2023 (via ../shared/data/README.md)"
)
BEAUTY_REFERENCES: list[dict[str, Any]] = [
    {"name": "SASRec+ (published)", "hr@10": 0.0533, "ndcg@10": 0.0327},
    {"name": "BERT4Rec (published)", "hr@10": 0.0338, "ndcg@10": 0.0187},
    {"name": "SASRec+ 3000 negatives (published)", "hr@10": 0.0490, "ndcg@10": 0.0295},
]


# --- provenance ------------------------------------------------------------------------------
def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    return cpu_model()


# --- results ---------------------------------------------------------------------------------
MEASUREMENT_NOTE = (
    "NDCG@10 and HR@10: test split, mean ± sd over the student seeds (the teacher is one "
    "model), 95% CI: bootstrap over test users of the per-user NDCG@10 averaged over seeds. "
    "The served stage is evaluated through the service (its loader, request path and scorer "
    "at default settings, micro-batches of the service's size, top-k answers); the other "
    "stages by the pipeline (fp32 ONNX encoder against the fp32 item table, full ranking, "
    "seen items removed). model bytes: unpacked files each stage needs to answer. enc µs: "
    "onnxruntime encoder, 1 thread, 32 test histories padded to max_len (b32: per row); e2e "
    "µs: encode + score every item + top 10 with the service's scorer, 1 thread, same inputs. "
    "Times: every stage timed in turn at the end of the run on one pinned core, "
    f"{TIMING_ROUNDS} rounds (the last seed's models and bundle, the teacher among them), "
    "the median of the rounds; the per-seed "
    "times under `runs` are context. "
    "encoder MFLOP: matrix products of one request at max_len, item table excluded."
)


def references_for(dataset: str, sha256: str) -> dict[str, Any]:
    applies = sha256 == BEAUTY_SHA256
    return {
        "dataset": "amazon-beauty",
        "sha256": BEAUTY_SHA256,
        "applies_to_this_data": applies,
        "source": BEAUTY_SOURCE,
        "protocol": "leave-one-out test, full ranking, seen items removed",
        "models": BEAUTY_REFERENCES,
    }


def pruning_summary(stages: list[dict[str, Any]], pipeline: dict[str, Any]) -> dict[str, Any]:
    """What pruning removed from the student's encoder (item table excluded), as measured."""
    by = {s["name"]: s for s in stages}
    ratio = pipeline.get("pruning", {}).get("ratio")
    if "pruned" not in by:
        return {
            "ran": False,
            "encoder_params_removed": 0.0,
            "encoder_flops_removed": 0.0,
            "summary": f"No pruning stage: the recipe's prune_ratio is {ratio}, so pruning "
            "would remove nothing and the served model is the distilled student, quantized.",
        }
    student, pruned = by["student"], by["pruned"]
    params = 1 - pruned["encoder_params"] / student["encoder_params"]
    flops = 1 - pruned["encoder_flops"] / student["encoder_flops"]
    return {
        "ran": True,
        "encoder_params_removed": params,
        "encoder_flops_removed": flops,
        "summary": f"Pruning (ratio {ratio}) removed {params:.1%} of the student's encoder "
        f"parameters and {flops:.1%} of its encoder FLOPs (item table excluded).",
    }


@dataclasses.dataclass
class RunInfo:
    """What a run was given and where it ran, for its results."""

    dataset: str
    data_path: Path
    data_sha256: str
    command: str
    recipe_name: str
    config: CompressConfig
    teacher_reused: dict[str, Any] | None
    provenance: GitState  # taken at the start: later commits are not in the code that ran
    wall_seconds: float = 0.0


def _machine(info: RunInfo, seeds: list[int]) -> dict[str, Any]:
    """Where and how long it ran."""
    config = info.config
    return {
        "device": config.device,
        "device_name": _device_name(config.device),
        "seeds": seeds,
        "teacher_seed": config.seed,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "latency_threads": 1,
        "wall_seconds": round(info.wall_seconds, 2),
    }


def _findings(info: RunInfo, stages: list[dict[str, Any]], s: Seeds) -> dict[str, Any]:
    """Baselines, stages, pruning, paired tests and targets (on Amazon Beauty only)."""
    report = s.reports[0]
    served_name = str(report["served_stage"])
    applies = info.data_sha256 == BEAUTY_SHA256
    pipeline = {k: v for k, v in report.get("recipe", {}).items() if k != "config"}
    fp32_name = served_name.removesuffix("+int8")
    return {
        "references": references_for(info.dataset, info.data_sha256),
        "popularity": report["popularity"],
        "stages": stages,
        "pruning": pruning_summary(stages, pipeline),
        "paired_tests": paired_tests(s.ranks, served_name, fp32_name, "ce_baseline"),
        "targets": evaluate_targets(stages, served_name) if applies else None,
        "targets_note": "The targets were set for amazon-beauty (sha256 "
        f"{BEAUTY_SHA256[:12]}…) and are evaluated only there."
        + ("" if applies else f" Not evaluated on {info.dataset}."),
    }


def _per_seed(s: Seeds) -> dict[str, Any]:
    """Every seed's stage records and pipeline report."""
    return {
        "runs": [{"seed": seed, "stages": run} for seed, run in zip(s.seeds, s.runs, strict=True)],
        "pipelines": [
            {
                "seed": seed,
                "timings_s": r.get("timings_s", {}),
                **{k: v for k, v in r.get("recipe", {}).items() if k != "config"},
            }
            for seed, r in zip(s.seeds, s.reports, strict=True)
        ],
    }


def build_results(
    s: Seeds, info: RunInfo, *, together: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """compress-<dataset>.json. `together` (from `time_together`) replaces each stage's
    per-seed timing medians."""
    report = s.reports[0]
    stages = aggregate(s.runs, s.ranks)
    for row in stages:
        if together and row["name"] in together:
            row.update(together[row["name"]])
            row["timed"] = "together"
    data = {"path": str(info.data_path), "sha256": info.data_sha256, **report.get("dataset", {})}
    return {
        "dataset": info.dataset,
        "data": data,
        "command": info.command,
        **info.provenance,
        "served_stage": str(report["served_stage"]),
        **_machine(info, s.seeds),
        "teacher_reused": info.teacher_reused,
        "recipe_name": info.recipe_name,
        "recipe": _jsonable(dataclasses.asdict(info.config)),
        "evaluation": report.get("evaluation", ""),
        "measurement_note": MEASUREMENT_NOTE,
        **_findings(info, stages, s),
        **_per_seed(s),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_ranks(path: Path, ranks: Ranks) -> None:
    """Per-user ranks of every stage and seed (users in test-split order; -1 = not in the
    service's answer), so any two stages can be compared later."""
    arrays = {
        f"{stage}/seed{seed}": r.astype(np.int32)
        for stage, by in ranks.items()
        for seed, r in by.items()
    }
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


# --- command line ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compress", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", required=True, type=Path, help="interactions file")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="where the JSON, markdown, PNG and ranks go (default: benchmarks/results)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("benchmarks/work"),
        help="bundles, teacher and raw pipeline reports (default: benchmarks/work, ignored)",
    )
    p.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE)
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="student-side repeats (distil, prune, quantize, ce_baseline) from one teacher",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="reuse a teacher an earlier run saved (work/<dataset>/teacher-seed<N>.pt); "
        "refused unless it was trained on this data with this recipe's settings",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: the recipe's, cpu)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a CompressConfig field, e.g. --set prune_ratio=0.3",
    )
    p.add_argument(
        "--pq-variants",
        default=None,
        metavar="M,M,...",
        help="also ship pq4 bundles of these subspace counts from the first seed's "
        "model, beside its int4-rows bundle (default: the recipe's; '' for none)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    return p


def _clear_previous(work: Path, version: str) -> None:
    """The harness owns its work dir: remove the previous run of this version (every seed)."""
    for path in work.glob(f"{version}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _parse(
    argv: Sequence[str],
) -> tuple[argparse.ArgumentParser, argparse.Namespace, CompressConfig, tuple[int, ...]]:
    """The parser, the arguments, the run's config and the pq4 variants' subspace counts; a
    usage error on anything it cannot run."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plot needs matplotlib: pip install -e '.[bench]' (or --no-plot)")
    if not args.data.is_file():
        parser.error(f"no such data file: {args.data}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.teacher is not None and not args.teacher.is_file():
        parser.error(f"no such teacher checkpoint: {args.teacher}")
    try:
        overrides = parse_sets(args.sets)
        variants = parse_variants(args.pq_variants, args.recipe)
    except ValueError as e:
        parser.error(str(e))
    config = build_config(
        data=str(args.data),
        work=args.work / args.data.stem,
        recipe=args.recipe,
        device=args.device,
        overrides=overrides,
    )
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {config.device}: no CUDA device here")
    return parser, args, config, variants


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args, config, variants = _parse(argv)
    dataset = args.data.stem
    work = args.work / dataset
    info = RunInfo(
        dataset=dataset,
        data_path=args.data,
        data_sha256=sha256_file(args.data),
        command=command_line("benchmarks.compress", argv),
        recipe_name=args.recipe,
        config=config,
        teacher_reused=None,
        provenance=git_state(),
    )
    log(info.command)
    log(f"dataset {dataset}, recipe {args.recipe}, device {config.device}, work dir {work}")
    _clear_previous(work, config.version)
    try:
        prep = prepare_data(config)
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        teacher, info.teacher_reused = teacher_for(
            config, prep, work, info.data_sha256, args.teacher
        )
    except ValueError as e:
        parser.error(str(e))
    seeds = run_seeds(config, prep, teacher, n=args.seeds, pq_variants=variants)
    log(f"timing every stage together ({TIMING_ROUNDS} rounds, the last seed's models)")
    timing = timing_inputs(prep.split.test, config.max_len, config.latency_budget_s)
    together = time_together(seeds.timers, timing)
    info.wall_seconds = time.perf_counter() - t_start
    results = build_results(seeds, info, together=together)
    _write(results, seeds.ranks, args.out, dataset, plot=not args.no_plot)
    targets = results["targets"]
    verdict = "not evaluated" if targets is None else "PASS" if targets["all_passed"] else "FAIL"
    log(f"wall time {duration(info.wall_seconds)}; targets {verdict}")
    return 0


def _write(results: Results, ranks: Ranks, out: Path, dataset: str, *, plot: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compress-{dataset}"
    stem.with_suffix(".json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    markdown = render_markdown(results)
    stem.with_suffix(".md").write_text(markdown, encoding="utf-8")
    save_ranks(out / f"compress-{dataset}-ranks.npz", ranks)
    if plot:
        render_plot(results, stem.with_suffix(".png"))
    print()
    print(markdown)
    log(f"wrote {stem}.{{json,md,png}} and {stem}-ranks.npz")


if __name__ == "__main__":
    sys.exit(main())
