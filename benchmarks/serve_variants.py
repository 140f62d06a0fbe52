"""The serving benchmark's variants: what each one serves, and one variant measured.

    variants = make_variants(["ceiling", "shipped"], shipped_dir, run_dir, ...)
    result = run_variant(variants[0], workload, workload_path, opts, levels=[100, 250], ...)

A variant's server is started pinned (`Variant.cpu`, else `LoadOptions.server_cpu`), warmed
up with checked answers, loaded at a ladder of offered rates (`serve_ladder.climb`) and
stopped; `shipped` also gets the sequential measurement (before its ladder) and one more
level at `LOAD_SHARE_AT` of its own max.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import orjson

from benchmarks.harness.load import Level, run_locust, run_wrk
from benchmarks.harness.log import logger
from benchmarks.harness.pinning import can_pin
from benchmarks.harness.servers import (
    Server,
    post,
    read_batch_counters,
    service_env,
    uvicorn_command,
)
from benchmarks.serve_ladder import at_max, climb, max_rps, qualifies
from benchmarks.serve_report import flags
from benchmarks.serve_sequential import (
    SEQUENTIAL_WARMUP,
    Sequential,
    run_sequential,
    sequential_bodies,
)
from benchmarks.workload import Workload

VARIANTS = ("ceiling", "naive", "student_fp32", "shipped", "shipped_2w")
WORKERS_VARIANT = "shipped_2w"  # shipped with WORKERS_2W serving processes
WORKERS_2W = 2
SHIPPED_BATCH = 32
CONSTANT_PATH = "/bench/constant"
LOAD_SHARE_AT = 0.7  # shipped's extra level, at this share of its own max rps

log = logger("bench-serve")


class VariantInfo(TypedDict, total=False):
    """What a variant's results say about its model."""

    architecture: dict[str, Any]
    architecture_source: str
    params: int
    weights: str
    item_encoding: str
    onnx: str


@dataclass
class Variant:
    name: str
    description: str
    app: str  # uvicorn factory
    bundle: Path
    path: str = "/recommend"
    env: dict[str, str] = field(default_factory=dict)
    info: VariantInfo = field(default_factory=lambda: VariantInfo())
    workers: int = 1  # uvicorn --workers
    cpu: str | None = None  # the server's taskset core list; None: --server-cpu


class LevelAt70(Level):
    """shipped's extra level at LOAD_SHARE_AT of its own max rps."""

    of_max_rps: float


class VariantResult(VariantInfo):
    """One variant's entry of serve.json's `variants`."""

    name: str
    description: str
    server: str
    workers: int
    server_cpu: str | None
    server_pinned: bool
    env: dict[str, str]
    bundle: str
    path: str
    startup_s: float
    max_rps_at_p99_50ms: float | None
    ladder_exhausted: bool
    levels: list[Level]
    locust_limited: bool
    p99_at_70pct: NotRequired[LevelAt70]
    rss_mb: NotRequired[float | None]  # after the ladder, summed over the server's processes
    peak_rss_mb: NotRequired[float | None]
    sequential: NotRequired[Sequential]  # shipped only
    wrk: NotRequired[dict[str, Any]]


@dataclass
class LoadOptions:
    duration_s: float
    user_rps: float
    server_cpu: str | None
    load_cpu: str | None
    warmup: int
    ready_timeout_s: float
    run_dir: Path
    sequential: int = 0  # requests of the sequential measurement of shipped; 0: none
    seed: int = 0


@dataclass
class WrkOptions:
    duration_s: float
    connections: int


# --- the variants ----------------------------------------------------------------------------
def bundle_weights(manifest: dict[str, Any]) -> str:
    recipe = manifest.get("recipe") or {}
    if "weights" in recipe:
        return str(recipe["weights"])
    if "teacher" in recipe and "distillation" in recipe:
        return "trained (models.compress)"
    return "as the bundle's manifest says (recipe)"


def _ceiling(shipped: Path) -> Variant:
    what = "service.main.create_app + POST /bench/constant (same parsing, constant answer)"
    return Variant("ceiling", what, "benchmarks.apps:ceiling_app", shipped, path=CONSTANT_PATH)


def _naive(shipped: Path, manifest: dict[str, Any], teacher_ckpt: Path | None) -> Variant:
    from benchmarks.serve_bundles import RANDOM_INIT, architecture_for, params_of

    config, source = architecture_for(manifest, "teacher")
    env = {"NAIVE_BUNDLE": str(shipped.resolve())}
    if teacher_ckpt is not None and teacher_ckpt.is_file():
        env["NAIVE_CHECKPOINT"] = str(teacher_ckpt.resolve())
    weights = f"trained ({teacher_ckpt})" if "NAIVE_CHECKPOINT" in env else RANDOM_INIT
    info = VariantInfo(
        architecture=config, architecture_source=source, params=params_of(config), weights=weights
    )
    what = "teacher SASRec in PyTorch fp32, 1 thread, one request at a time, full-catalog matmul + topk"
    return Variant("naive", what, "benchmarks.apps:naive_app", shipped, env=env, info=info)


def _student_fp32(
    shipped: Path, run_dir: Path, arch: Literal["student", "pruned"], ckpt: Path | None
) -> Variant:
    from benchmarks.serve_bundles import fp32_student_bundle

    bundle_dir, info = fp32_student_bundle(
        shipped, run_dir / "student-fp32-bundle", which=arch, checkpoint=ckpt
    )
    what = (
        "the service, micro-batching off (BATCH_MAX_SIZE=1), fp32 student (fp32 ONNX, fp32 items)"
    )
    return Variant(
        "student_fp32",
        what,
        "service.main:create_app",
        bundle_dir,
        env={"BATCH_MAX_SIZE": "1"},
        info=info,
    )


def _shipped(shipped: Path, manifest: dict[str, Any], batch: int) -> Variant:
    info = VariantInfo(item_encoding=manifest["item_encoding"], weights=bundle_weights(manifest))
    what = f"the service, BATCH_MAX_SIZE={batch}, the shipped bundle"
    env = {"BATCH_MAX_SIZE": str(batch)}
    return Variant("shipped", what, "service.main:create_app", shipped, env=env, info=info)


def _shipped_2w(shipped: Path, manifest: dict[str, Any], batch: int, cpu: str | None) -> Variant:
    v = _shipped(shipped, manifest, batch)
    v.name, v.app, v.workers, v.cpu = WORKERS_VARIANT, "service.main:worker_app", WORKERS_2W, cpu
    v.description = (
        f"shipped with WORKERS={WORKERS_2W} (uvicorn --workers {WORKERS_2W}, "
        f"service.main:worker_app) on cores {cpu}"
    )
    v.env["WORKERS"] = str(WORKERS_2W)
    return v


def make_variants(
    names: Sequence[str],
    shipped: Path,
    run_dir: Path,
    *,
    teacher_ckpt: Path | None,
    student_ckpt: Path | None,
    student_arch: Literal["student", "pruned"],
    batch_max_size: int,
    workers_cpu: str | None = "0-1",
) -> list[Variant]:
    """The variants `names` asks for, in its order (the student_fp32 bundle built here)."""
    from benchmarks.serve_bundles import read_manifest_dict

    manifest = read_manifest_dict(shipped)
    build: dict[str, Callable[[], Variant]] = {
        "ceiling": lambda: _ceiling(shipped),
        "naive": lambda: _naive(shipped, manifest, teacher_ckpt),
        "student_fp32": lambda: _student_fp32(shipped, run_dir, student_arch, student_ckpt),
        "shipped": lambda: _shipped(shipped, manifest, batch_max_size),
        WORKERS_VARIANT: lambda: _shipped_2w(shipped, manifest, batch_max_size, workers_cpu),
    }
    return [build[name]() for name in names if name in build]


# --- one variant measured --------------------------------------------------------------------
def start_server(
    variant: Variant, run_dir: Path, *, cpu: str | None, ready_timeout_s: float
) -> Server:
    """The variant's server on a free port, with a fresh model directory, once ready."""
    model_dir = run_dir / variant.name / "models"
    shutil.rmtree(model_dir, ignore_errors=True)
    env = service_env(
        {
            "MODEL_DIR": str(model_dir),
            "BOOTSTRAP_BUNDLE": str(variant.bundle.resolve()),
            **variant.env,
        }
    )
    return Server.uvicorn(
        variant.app,
        env=env,
        cpu=cpu,
        log=run_dir / variant.name / "server.log",
        workers=variant.workers,
        ready_timeout_s=ready_timeout_s,
    )


def warm_up(server: Server, path: str, workload: Workload, n: int) -> None:
    """`n` sequential requests of both kinds; every answer must be a 200 of the right shape."""
    k = int(workload.meta.get("config", {}).get("k", 10))
    for i in range(max(n, 2)):
        rerank = i % 3 == 2
        bodies = workload.rerank if rerank else workload.full
        status, raw = post(server.url + path, bodies[i % len(bodies)])
        if status != 200:
            raise RuntimeError(f"{path} answered {status} during warm-up: {raw[:500]!r}")
        if i < 3:
            answer = orjson.loads(raw)
            if not 0 < len(answer["items"]) <= k or "model_version" not in answer:
                raise RuntimeError(f"{path} answered an unexpected body: {raw[:500]!r}")


def batch_mean(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """Requests per model call between two readings of the batch-size counters (sum, count);
    None when either is missing or no call was made."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def level_runner(
    server: Server, variant: Variant, workload_path: Path, opts: LoadOptions, tag: str
) -> Callable[[float], Level]:
    """A function running one locust level at an offered rate against `server`, logged."""

    def run_level(offered: float) -> Level:
        # A multi-worker server's /metrics answers from whichever worker took the scrape.
        before = read_batch_counters(server.url) if variant.workers == 1 else None
        level = run_locust(
            server.url,
            offered_rps=offered,
            duration_s=opts.duration_s,
            workload=workload_path,
            path=variant.path,
            csv_prefix=opts.run_dir / variant.name / f"{tag}-{offered:g}",
            user_rps=opts.user_rps,
            cpu=opts.load_cpu,
            server=server,
        )
        level["batch_mean"] = batch_mean(
            before, read_batch_counters(server.url) if before else None
        )
        log(
            f"{variant.name:>12} offered {offered:>7g} rps: achieved {level['rps'] or 0:8.1f}, "
            f"p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms, failures "
            f"{level['failures']:.2%}, server cpu {level['server_cpu']}, locust cpu "
            f"{level['locust_cpu']}, mean batch {level['batch_mean']}"
            + (f" ({flags(level)})" if flags(level) else "")
        )
        return level

    return run_level


def _sequential(
    server: Server, variant: Variant, workload: Workload, opts: LoadOptions
) -> Sequential:
    """`run_sequential` on the variant's workload bodies, logged."""
    seq = run_sequential(
        server.url,
        variant.path,
        sequential_bodies(workload, opts.sequential, seed=opts.seed),
        warmup=SEQUENTIAL_WARMUP,
        cpu=opts.load_cpu,
    )
    log(
        f"{variant.name} sequential: {seq['n']} requests, server p50 {seq['server_p50_ms']} ms "
        f"p99 {seq['server_p99_ms']} ms; client p50 {seq['client_p50_ms']} ms p99 "
        f"{seq['client_p99_ms']} ms; failures {seq['failures']}"
    )
    return seq


def _result(
    variant: Variant, cpu: str | None, startup_s: float, done: list[Level]
) -> VariantResult:
    """The variant's record once its ladder ran; memory and the extras are added after."""
    best = max_rps(done)
    server = shlex.join(uvicorn_command(variant.app, 0, variant.workers))
    # cast: a TypedDict literal cannot spread the optional model keys of `info` (mypy)
    record = {
        "name": variant.name,
        "description": variant.description,
        "server": server.replace("--port 0", "--port PORT"),
        "workers": variant.workers,
        "server_cpu": cpu,
        "server_pinned": can_pin(cpu),
        "env": {k: v for k, v in variant.env.items() if k != "NAIVE_BUNDLE"},
        "bundle": str(variant.bundle),
        "path": variant.path,
        **variant.info,
        "startup_s": round(startup_s, 2),
        "max_rps_at_p99_50ms": best,
        "ladder_exhausted": bool(done) and qualifies(done[-1]) and best is not None,
        "levels": done,
        "locust_limited": any(lv["locust_limited"] for lv in at_max(done, best)),
    }
    return cast(VariantResult, record)


def run_variant(
    variant: Variant,
    workload: Workload,
    workload_path: Path,
    opts: LoadOptions,
    *,
    levels: Sequence[float],
    refine: int,
    min_rps: float,
    wrk: WrkOptions | None,
) -> VariantResult:
    """Start the variant's server, climb its ladder, measure what else it needs, stop it."""
    cpu = variant.cpu if variant.cpu is not None else opts.server_cpu
    log(
        f"{variant.name}: starting {variant.app} ({variant.workers} worker(s), cores {cpu}) on {variant.bundle}"
    )
    t0 = time.monotonic()
    with start_server(
        variant, opts.run_dir, cpu=cpu, ready_timeout_s=opts.ready_timeout_s
    ) as server:
        startup_s = time.monotonic() - t0
        warm_up(server, variant.path, workload, opts.warmup)
        sequential = None
        if variant.name == "shipped" and opts.sequential > 0:
            # Before the ladder: a quiet, warm server, as a storefront's page view finds it.
            sequential = _sequential(server, variant, workload, opts)
        done = climb(
            levels,
            level_runner(server, variant, workload_path, opts, "level"),
            refine=refine,
            min_rps=min_rps,
        )
        out = _result(variant, cpu, startup_s, done)
        best = out["max_rps_at_p99_50ms"]
        if variant.name == "shipped" and best:
            run_at70 = level_runner(server, variant, workload_path, opts, "at70")
            out["p99_at_70pct"] = {**run_at70(round(LOAD_SHARE_AT * best, 1)), "of_max_rps": best}
        out["rss_mb"], out["peak_rss_mb"] = server.rss_mb(), server.peak_rss_mb()
        if sequential is not None:
            out["sequential"] = sequential
        if wrk is not None and (variant.name == "ceiling" or out["locust_limited"]):
            log(f"{variant.name}: wrk, {wrk.connections} connections")
            out["wrk"] = run_wrk(
                server.url + variant.path,
                body=workload.full[0],
                duration_s=wrk.duration_s,
                connections=wrk.connections,
                cpu=opts.load_cpu,
                script_path=opts.run_dir / variant.name / "wrk.lua",
            )
    return out
