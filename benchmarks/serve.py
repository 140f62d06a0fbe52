"""Serving benchmark: requests per second at a latency bound, and latency at every load.

    make bench-serve [DATA=../shared/data/amazon-beauty.txt] [SERVE_ARGS='--duration 10']
    python -m benchmarks.serve [--data ../shared/data/amazon-beauty.txt] [--bundle DIR] \\
        [--levels 100,250,...] [--duration 20] \\
        [--variants ceiling,naive,student_fp32,shipped,shipped_2w] [--no-workers] \\
        [--sequential 2000] [--scale LABEL=BUNDLE_DIR[:RECALL] ...] [--out benchmarks/results]
    # a smoke run (a minute or two; the numbers mean nothing on a busy machine):
    python -m benchmarks.serve --levels 100,250 --duration 3 \\
        --variants ceiling,shipped,shipped_2w --sequential 300 --no-scale --no-wrk \\
        --out /tmp/serve-smoke

Each variant's server runs pinned to core 0 (`taskset -c 0`; shipped_2w: cores 0-1);
headless locust (`benchmarks/locustfile.py`, ~70% full-catalog /recommend, ~30% reranking of
50-200 search candidates, histories of real users) drives it from core 1, at a ladder of
offered loads (users × a Poisson process of `--user-rps` each), `--duration` seconds per
level. A variant's ladder stops after the first level whose p99 exceeds 200 ms or whose
failures exceed 1%; then the boundary of p99 <= 50 ms is narrowed (up to `--refine` levels
bisecting between the last level within it and the first beyond, until they are less than 5%
apart). Variants:

    ceiling       the real app (`service.main.create_app`) plus POST /bench/constant: same
                  body parsing and validation, constant answer of the same size
                  (`benchmarks/apps.py`): what this HTTP stack can do at most on one core
    naive         the teacher in PyTorch fp32, one request at a time, full-catalog matmul
    student_fp32  the real service, micro-batching off (BATCH_MAX_SIZE=1), an fp32 student
    shipped       the real service, BATCH_MAX_SIZE=32, the pruned INT8 bundle of
                  `make bench-compress` (newest under benchmarks/work/<dataset>/; --bundle)
    shipped_2w    shipped with WORKERS=2 (uvicorn `--workers 2`, `service.main:worker_app`),
                  pinned to cores 0-1 (`--workers-cpu`): its second worker shares core 1 with
                  locust, so on a 2-core machine it is 1 worker on core 0 against 2 workers
                  on cores 0-1, locust on core 1 in both (the report says what that limits)

Besides the ladders, for `shipped`:

- sequential: one caller, one keep-alive connection (`http.client`, the client pinned to
  the load core), `--sequential` requests back to back from the same workload bodies
  (70% full catalog, 30% rerank), each sent when the previous answer arrived; p50/p90/p99 of
  the server's own time (its `Server-Timing: app;dur=...` header) and of the round trip;
- p50 against the ceiling at every offered load up to half of shipped's max rps (same
  offered load, no interpolation: a level the ceiling did not run is reported as such);
- the targets (`evaluate_targets`, from the measured numbers only): shipped / ceiling max
  rps >= 0.7, shipped / naive >= 10, p99 at 70% of shipped's max <= 25 ms, p50 excess over
  the ceiling <= 2 ms at every compared level, sequential server p50 <= 1.5 ms and client
  p50 <= 3 ms. The workers comparison (max rps at p99 <= 50 ms, 2 workers / 1) is no target.

Writes `serve.json`, `serve.md` and `serve.png` under `--out`; locust CSVs, server logs and
the generated bundles go to `<work>/serve/` (git-ignored, replaced each run). The scale part
(`run_scale`) serves other bundles (e.g. a 1M-item catalog) at one offered load and reports
latency and the server's resident memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.log import logger
from benchmarks.harness.pinning import can_pin, pinned
from benchmarks.harness.report import write_results
from benchmarks.provenance import (
    HostInfo,
    command_line,
    host_info,
    package_version,
    python_probe_ms,
    run_provenance,
)
from benchmarks.serve_ladder import MIN_RPS, P99_LIMIT_MS, STOP_FAILURES, STOP_P99_MS
from benchmarks.serve_report import render_markdown, render_plot
from benchmarks.serve_scale import (
    ScaleEntry,
    ScaleRow,
    default_scale_entries,
    parse_scale,
    run_scale,
)
from benchmarks.serve_sequential import SEQUENTIAL_N
from benchmarks.serve_targets import evaluate_targets, p50_vs_ceiling, workers_comparison
from benchmarks.serve_variants import (
    LOAD_SHARE_AT,
    SHIPPED_BATCH,
    VARIANTS,
    WORKERS_VARIANT,
    LoadOptions,
    Variant,
    VariantResult,
    WrkOptions,
    make_variants,
    run_variant,
)
from benchmarks.workload import (
    Workload,
    WorkloadConfig,
    build_workload,
    histories_from_data,
    read_vocab,
)

DEFAULT_LEVELS = (100, 250, 500, 1000, 2000, 3000, 4000, 5000, 6000)
DEFAULT_DATA = Path("../shared/data/amazon-beauty.txt")
PACKAGES = ("locust", "uvicorn", "fastapi", "onnxruntime", "torch")

log = logger("bench-serve")


# --- command line ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serve", description=__doc__.split("\n")[0]
    )
    _input_arguments(p)
    _load_arguments(p)
    _variant_arguments(p)
    _scale_arguments(p)
    return p


def _input_arguments(p: argparse.ArgumentParser) -> None:
    """Data, bundle, work and output directories, variants and the ladder."""
    a = p.add_argument
    a(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="interactions file for real histories (absent: synthetic catalog)",
    )
    a(
        "--bundle",
        type=Path,
        default=None,
        help="shipped bundle dir (default: newest under <work>/<data stem>/)",
    )
    a("--work", type=Path, default=Path("benchmarks/work"))
    a("--out", type=Path, default=Path("benchmarks/results"))
    a(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    a("--levels", default=",".join(map(str, DEFAULT_LEVELS)), help="offered loads, rps, ascending")


def _load_arguments(p: argparse.ArgumentParser) -> None:
    """How long, how hard, on which cores."""
    a = p.add_argument
    a("--duration", type=float, default=20.0, help="seconds per level")
    a(
        "--refine",
        type=int,
        default=4,
        help="extra levels narrowing each variant's p99 ≤ 50 ms bound",
    )
    a(
        "--user-rps",
        type=float,
        default=10.0,
        help="request rate of one locust user (Poisson); users = offered / this",
    )
    a(
        "--min-rps",
        type=float,
        default=MIN_RPS,
        help="lowest load tried below the ladder for a variant over 50 ms at its first level",
    )
    a("--warmup", type=int, default=200, help="sequential requests before a ladder")
    a("--server-cpu", default="0", help="taskset core list of the servers")
    a("--load-cpu", default="1", help="taskset core list of locust, wrk and the sequential client")
    a(
        "--workers-cpu",
        default="0-1",
        help=f"taskset core list of {WORKERS_VARIANT}'s server (its second worker shares the "
        "load core on a 2-core machine)",
    )
    a(
        "--no-workers",
        action="store_true",
        help=f"leave out {WORKERS_VARIANT} (the 1 vs 2 workers comparison)",
    )


def _variant_arguments(p: argparse.ArgumentParser) -> None:
    """The sequential measurement, the variants' settings and weights, wrk."""
    a = p.add_argument
    a(
        "--sequential",
        type=int,
        default=SEQUENTIAL_N,
        metavar="N",
        help="shipped, one caller on one keep-alive connection: N requests back to back (0 = skip)",
    )
    a("--batch-max-size", type=int, default=SHIPPED_BATCH)
    a(
        "--teacher-checkpoint",
        type=Path,
        default=None,
        help="state dict of the teacher (default: <work>/<data stem>/teacher.pt)",
    )
    a(
        "--student-checkpoint",
        type=Path,
        default=None,
        help="state dict of the student (default: <work>/<data stem>/student.pt)",
    )
    a(
        "--student-arch",
        choices=["student", "pruned"],
        default="student",
        help="student_fp32 shape: the distilled student or the pruned one",
    )


def _scale_arguments(p: argparse.ArgumentParser) -> None:
    """The scale table, and what every run shares."""
    a = p.add_argument
    a("--no-wrk", action="store_true", help="skip wrk")
    a("--wrk-duration", type=float, default=None, help="default: --duration")
    a("--wrk-connections", type=int, default=50)
    a(
        "--scale",
        action="append",
        default=[],
        metavar="LABEL=DIR[:RECALL]",
        help="a bundle for the scale table (default: the shipped bundle)",
    )
    a(
        "--scale-rps",
        type=float,
        default=None,
        help="offered load of the scale runs (default: 70%% of shipped's max)",
    )
    a(
        "--scale-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the scale servers, e.g. ANN_NPROBE=32 (repeatable)",
    )
    a(
        "--scale-items",
        type=int,
        default=1_000_000,
        help="without --scale: also grow the shipped catalog to this many items "
        "(benchmarks.catalog.grow_bundle, noise 0.3) and serve it; 0 = no",
    )
    a("--no-scale", action="store_true")
    a("--ready-timeout", type=float, default=300.0)
    a("--seed", type=int, default=0)
    a("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, not {item!r}")
    return key, value


@dataclass
class Plan:
    """What the command line asks for, checked."""

    names: list[str]  # variants, in order
    levels: list[float]  # offered loads, ascending
    scale_entries: list[ScaleEntry]
    scale_env: dict[str, str]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Plan]:
    """The arguments and the plan; exits with a usage error on anything it cannot run."""
    parser = _parser()
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        parser.error("the load generator needs locust: pip install -e '.[bench]'")
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plot needs matplotlib: pip install -e '.[bench]' (or --no-plot)")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(names) - set(VARIANTS) or not names:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if args.no_workers:
        names = [n for n in names if n != WORKERS_VARIANT]
    if args.sequential < 0:
        parser.error("--sequential: a number of requests, 0 to skip")
    try:
        levels = sorted(float(x) for x in args.levels.split(",") if x.strip())
        plan = Plan(names, levels, parse_scale(args.scale), dict(map(_key_value, args.scale_env)))
    except ValueError as e:
        parser.error(str(e))
    if not levels or levels[0] <= 0:
        parser.error("--levels: positive offered loads")
    if args.bundle is not None and not (args.bundle / "manifest.json").is_file():
        parser.error(f"--bundle {args.bundle}: not a bundle directory")
    return args, plan


# --- the run ---------------------------------------------------------------------------------
@dataclass
class Inputs:
    """The shipped bundle, how it was found, and the workload built from the data."""

    run_dir: Path
    shipped: Path
    provenance: dict[str, Any]
    manifest: dict[str, Any]
    histories: list[list[str]] | None
    workload_config: WorkloadConfig
    workload: Workload
    workload_path: Path


def prepare_inputs(args: argparse.Namespace) -> Inputs:
    """A fresh run directory under `--work`, the bundle to ship and the locust workload."""
    from benchmarks.serve_bundles import read_manifest_dict, resolve_inputs

    run_dir = args.work / "serve"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    data, shipped, provenance = resolve_inputs(args.data, args.bundle, args.work)
    vocab = read_vocab(shipped / "vocab.json")
    histories = histories_from_data(data, vocab=vocab) if data is not None else None
    config = WorkloadConfig(seed=args.seed)
    workload = build_workload(vocab, histories, config, source=str(data))
    workload_path = workload.save(run_dir / "workload.json")
    log(
        f"workload: {workload.meta['histories']} histories ({len(histories or [])} users), "
        f"mean length {workload.meta['mean_history_len']}, catalog {len(vocab)} items"
    )
    manifest = read_manifest_dict(shipped)
    return Inputs(
        run_dir, shipped, provenance, manifest, histories, config, workload, workload_path
    )


def load_options(args: argparse.Namespace, run_dir: Path) -> LoadOptions:
    return LoadOptions(
        duration_s=args.duration,
        user_rps=args.user_rps,
        server_cpu=args.server_cpu,
        load_cpu=args.load_cpu,
        warmup=args.warmup,
        ready_timeout_s=args.ready_timeout,
        run_dir=run_dir,
        sequential=args.sequential,
        seed=args.seed,
    )


def variants_for(args: argparse.Namespace, plan: Plan, inputs: Inputs) -> list[Variant]:
    """The plan's variants (student_fp32's bundle built here); the teacher and student
    weights, where found, are those `models.compress` kept beside the shipped bundle."""
    from models.compress import checkpoint_dir

    ckpt_dir = checkpoint_dir(inputs.shipped.parent, inputs.shipped.name)
    return make_variants(
        plan.names,
        inputs.shipped,
        inputs.run_dir,
        teacher_ckpt=args.teacher_checkpoint or ckpt_dir / "teacher.pt",
        student_ckpt=args.student_checkpoint or ckpt_dir / "student.pt",
        student_arch=args.student_arch,
        batch_max_size=args.batch_max_size,
        workers_cpu=args.workers_cpu,
    )


def run_variants(
    args: argparse.Namespace, plan: Plan, inputs: Inputs, variants: list[Variant]
) -> list[VariantResult]:
    """Every variant in turn, each with its ladder."""
    wrk = (
        None
        if args.no_wrk
        else WrkOptions(args.wrk_duration or args.duration, args.wrk_connections)
    )
    opts = load_options(args, inputs.run_dir)
    return [
        run_variant(
            v,
            inputs.workload,
            inputs.workload_path,
            opts,
            levels=plan.levels,
            refine=args.refine,
            min_rps=args.min_rps,
            wrk=wrk,
        )
        for v in variants
    ]


def run_scale_part(
    args: argparse.Namespace, plan: Plan, inputs: Inputs, shipped_max: float | None
) -> list[ScaleRow]:
    """The scale table: `--scale` bundles, else the shipped catalog and it grown."""
    if args.no_scale:
        return []
    entries = plan.scale_entries or default_scale_entries(
        inputs.shipped,
        inputs.run_dir,
        inputs.histories or [],
        grow_to=args.scale_items,
        seed=args.seed,
        env=plan.scale_env,
    )
    rps = args.scale_rps or (round(LOAD_SHARE_AT * shipped_max, 1) if shipped_max else 500.0)
    return run_scale(
        entries,
        offered_rps=rps,
        opts=load_options(args, inputs.run_dir),
        histories=inputs.histories,
        workload_config=inputs.workload_config,
        batch_max_size=args.batch_max_size,
        extra_env=plan.scale_env,
    )


# --- results ---------------------------------------------------------------------------------
def _pinning(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    return {
        "server_cpu": args.server_cpu,
        "load_cpu": args.load_cpu,
        "server_pinned": can_pin(args.server_cpu),
        "load_pinned": can_pin(args.load_cpu),
        "workers_cpu": args.workers_cpu if WORKERS_VARIANT in plan.names else None,
    }


def _load(args: argparse.Namespace, plan: Plan, workload: Workload) -> dict[str, Any]:
    return {
        "tool": "locust (FastHttpUser, headless, one process)",
        "duration_s": args.duration,
        "user_rps": args.user_rps,
        "ladder": plan.levels,
        "refine": args.refine,
        "p99_limit_ms": P99_LIMIT_MS,
        "stop_p99_ms": STOP_P99_MS,
        "stop_rule": f"after the first level with p99 > {STOP_P99_MS:g} ms or failures > "
        f"{STOP_FAILURES:.0%}",
        "mix": {"full_catalog": 0.7, "rerank": 0.3},
        "workload": workload.meta,
        "warmup_requests": args.warmup,
    }


def _bundle(inputs: Inputs) -> dict[str, Any]:
    m = inputs.manifest
    return {
        "path": str(inputs.shipped),
        "version": m["model_version"],
        "n_items": m["n_items"],
        "dim": m["dim"],
        "max_len": m["max_len"],
        "item_encoding": m["item_encoding"],
    }


def build_results(
    argv: Sequence[str],
    args: argparse.Namespace,
    plan: Plan,
    inputs: Inputs,
    *,
    host: HostInfo,
    variants: list[VariantResult],
    scale: list[ScaleRow],
) -> dict[str, Any]:
    """serve.json (`wall_seconds` is filled in last)."""
    by = {v["name"]: v for v in variants}
    sequential = by["shipped"].pop("sequential", None) if "shipped" in by else None
    ceiling_wrk = by["ceiling"].get("wrk") if "ceiling" in by else None
    return {
        "benchmark": "serving (issue 4)",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **run_provenance("benchmarks.serve", argv),
        "host": host,
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in PACKAGES},
        "wall_seconds": None,
        "pinning": _pinning(args, plan),
        "load": _load(args, plan, inputs.workload),
        "inputs": inputs.provenance,
        "bundle": _bundle(inputs),
        "variants": variants,
        "sequential": sequential,
        "p50_vs_ceiling": p50_vs_ceiling(variants),
        "workers": workers_comparison(variants, load_cpu=args.load_cpu, cores=os.cpu_count()),
        "ceiling_wrk": {"error": "skipped (--no-wrk)"} if args.no_wrk else ceiling_wrk,
        "scale": scale,
        "targets": evaluate_targets(variants, sequential=sequential),
        "notes": NOTES,
    }


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, plan = parse_args(argv)
    log(command_line("benchmarks.serve", argv))
    inputs = prepare_inputs(args)
    to_run = variants_for(args, plan, inputs)
    probe_prefix = pinned([], args.server_cpu)
    host = host_info(probe_prefix)
    log(
        f"host: {host['cpu_mhz']} MHz, caches {host['caches']}, Python probe "
        f"{host['python_probe_ms']['start']} ms"
    )
    variants = run_variants(args, plan, inputs, to_run)
    shipped_max = next((v["max_rps_at_p99_50ms"] for v in variants if v["name"] == "shipped"), None)
    scale = run_scale_part(args, plan, inputs, shipped_max)
    host["python_probe_ms"]["end"] = python_probe_ms(probe_prefix)
    results = build_results(argv, args, plan, inputs, host=host, variants=variants, scale=scale)
    results["wall_seconds"] = round(time.monotonic() - t_start, 1)
    markdown = render_markdown(results)
    written = write_results(args.out, "serve", results, markdown, ensure_ascii=False)
    if not args.no_plot:
        render_plot(results, args.out / "serve.png")
        written.append(args.out / "serve.png")
    print()
    print(markdown)
    for p in written:
        log(f"wrote {p}")
    verdict = "PASS" if results["targets"]["all_passed"] else "FAIL"
    log(f"wall time {results['wall_seconds']:.0f} s; targets {verdict}")
    return 0


NOTES = [
    "Offered load: users × Poisson arrivals of user_rps each (open loop while answers come back "
    "within 1/user_rps s; a slower server gets less than offered: see rps).",
    "p50/p99: locust's Aggregated row (whole level, ramp-up included), whole milliseconds.",
    "max_rps_at_p99_50ms: the highest achieved rps among levels with p99 ≤ 50 ms and ≤ 1% "
    "failures (quantized to the levels run).",
    "locust_limited: locust's core was ≥ 90% busy (or locust warned that it was): the figure "
    "is then the load generator's limit, and wrk's closed-loop figure is given. short: "
    "achieved < 90% of offered (users fell behind: the server saturating, unless "
    "locust-limited).",
    "server_cpu / locust_cpu: CPU seconds of the process / wall seconds of the level (a "
    "server's whole process tree: supervisor and workers; RSS likewise summed, shared pages "
    "counted once per process).",
    "mean batch: requests per model call over the level (the service's recsys_batch_size "
    "histogram, read from GET /metrics before and after); '-' where no model is called (the "
    "ceiling) or not measured (the naive app; shipped_2w, whose workers count apart).",
    "p50 against the ceiling: locust's p50 is in whole milliseconds, so excess_ms is too; only "
    "levels with the same offered load are compared (no interpolation).",
    "sequential: the server's time is its Server-Timing header (0.01 ms resolution, from "
    "RequestContextMiddleware's entry to the response start); the client's, the round trip "
    "on one keep-alive connection, client pinned to the load core, gc paused.",
]


if __name__ == "__main__":
    sys.exit(main())
