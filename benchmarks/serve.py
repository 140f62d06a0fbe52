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
import contextlib
import gc
import http.client
import importlib.util
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from benchmarks.loadgen import (
    REPO,
    Server,
    can_pin,
    cpu_set,
    free_port,
    pinned,
    post,
    process_cpu_s,
    run_locust,
    run_wrk,
)
from benchmarks.provenance import cpu_model, git, host_info, python_exe, python_probe_ms
from benchmarks.serve_report import flags, render_markdown, render_plot
from benchmarks.workload import Workload, WorkloadConfig, build_workload, histories_from_data

VARIANTS = ("ceiling", "naive", "student_fp32", "shipped", "shipped_2w")
WORKERS_VARIANT = "shipped_2w"  # shipped with WORKERS_2W serving processes
WORKERS_2W = 2
DEFAULT_LEVELS = (100, 250, 500, 1000, 2000, 3000, 4000, 5000, 6000)
DEFAULT_DATA = Path("../shared/data/amazon-beauty.txt")
P99_LIMIT_MS = 50.0  # max_rps_at_p99_50ms
STOP_P99_MS = 200.0  # a ladder stops after the first level beyond either of these
STOP_FAILURES = 0.01
MIN_RPS = 5.0  # how far below the ladder a variant over the limit at its first level is tried
SHIPPED_BATCH = 32
CONSTANT_PATH = "/bench/constant"

# --- targets (issue 4; "Storefront-grade latency at every load") ------------------------------
TARGET_VS_CEILING = 0.7
TARGET_VS_NAIVE = 10.0
TARGET_P99_AT_70PCT_MS = 25.0
LOAD_SHARE_AT = 0.7
TARGET_P50_EXCESS_MS = 2.0  # shipped p50 - ceiling p50, same offered load ...
P50_COMPARE_SHARE = 0.5  # ... at every level up to this share of shipped's max rps
TARGET_SEQ_SERVER_P50_MS = 1.5  # one caller, back to back: Server-Timing p50
TARGET_SEQ_CLIENT_P50_MS = 3.0  # ... and the round trip's p50
SEQUENTIAL_N = 2000
SEQUENTIAL_WARMUP = 50  # unrecorded requests on the same connection first
RERANK_SHARE = 0.3  # the locustfile's mix (LOCUST_RERANK_SHARE's default)

SERVER_ENV_DROP = (
    "REDIS_URL", "ADMIN_TOKEN", "BOOTSTRAP_BUNDLE", "MODEL_DIR", "PORT", "HOST", "LOG_LEVEL",
    "BATCH_MAX_SIZE", "BATCH_MAX_DELAY_MS", "NAIVE_BUNDLE", "NAIVE_CHECKPOINT", "WORKERS",
)  # fmt: skip


@dataclass
class Variant:
    name: str
    description: str
    app: str  # uvicorn factory
    bundle: Path
    path: str = "/recommend"
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    workers: int = 1  # uvicorn --workers
    cpu: str | None = None  # the server's taskset core list; None: --server-cpu


# --- the ladder ------------------------------------------------------------------------------
def qualifies(level: dict[str, Any], p99_limit_ms: float = P99_LIMIT_MS) -> bool:
    """Within the latency bound: p99 <= the limit and at most 1% failures."""
    p99 = level.get("p99_ms")
    return p99 is not None and p99 <= p99_limit_ms and level["failures"] <= STOP_FAILURES


def breaks(level: dict[str, Any], stop_p99_ms: float = STOP_P99_MS) -> bool:
    p99 = level.get("p99_ms")
    return p99 is None or p99 > stop_p99_ms or level["failures"] > STOP_FAILURES


def climb(
    levels: Sequence[float],
    run_level: Callable[[float], dict[str, Any]],
    *,
    p99_limit_ms: float = P99_LIMIT_MS,
    stop_p99_ms: float = STOP_P99_MS,
    refine: int = 4,
    resolution: float = 1.05,
    min_rps: float = MIN_RPS,
) -> list[dict[str, Any]]:
    """Run the ladder in order until a level breaks, then narrow the p99 bound; sorted levels.

    A variant already over `p99_limit_ms` at the first level is tried at halved loads (down
    to `min_rps`) so a slow baseline still gets a figure. Up to `refine` more levels bisect
    (on a log scale) between the highest level within the bound and the next level beyond
    it, until the two are less than `resolution` apart: the figure is then at most that far
    below the true bound, for every variant alike."""
    done: list[dict[str, Any]] = []
    for offered in levels:
        level = run_level(float(offered))
        done.append(level)
        if breaks(level, stop_p99_ms):
            break
    offered = float(levels[0])
    while not any(qualifies(lv, p99_limit_ms) for lv in done) and offered / 2 >= min_rps:
        offered /= 2
        done.append(run_level(offered))
    for _ in range(refine):
        good = [lv for lv in done if qualifies(lv, p99_limit_ms)]
        if not good:
            break
        g = max(lv["offered_rps"] for lv in good)
        above = [
            lv["offered_rps"]
            for lv in done
            if lv["offered_rps"] > g and not qualifies(lv, p99_limit_ms)
        ]
        if not above or min(above) / g < resolution:
            break
        done.append(run_level(round(math.sqrt(g * min(above)), -1 if g >= 100 else 0)))
    return sorted(done, key=lambda lv: lv["offered_rps"])


def max_rps(levels: Sequence[dict[str, Any]], p99_limit_ms: float = P99_LIMIT_MS) -> float | None:
    """The highest achieved rate among levels within the latency bound."""
    ok = [lv["rps"] for lv in levels if qualifies(lv, p99_limit_ms) and lv.get("rps")]
    return max(ok) if ok else None


# --- provenance ------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _log(msg: str) -> None:
    print(f"[bench-serve] {msg}", file=sys.stderr, flush=True)


# --- servers ---------------------------------------------------------------------------------
def server_command(app: str, port: int, workers: int = 1) -> list[str]:
    """uvicorn, 1 worker (or `workers`), uvloop, httptools, no access log, warnings only."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        "--log-level", "warning", *(["--workers", str(workers)] if workers > 1 else []),
    ]  # fmt: skip


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's supervisor and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_mb(pid: int, key: str) -> float | None:
    """A `/proc/<pid>/status` memory line (VmRSS, VmHWM) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class TreeServer(Server):
    """A server whose CPU time and memory are those of its whole process tree, so a
    `--workers N` server (a supervisor and N worker processes) is counted whole; for one
    process the figures are that process's, as `Server`'s."""

    def cpu_s(self) -> float:
        return sum(process_cpu_s(p) for p in process_tree(self.pid))

    def rss_mb(self) -> float | None:
        return _sum_mb(_status_mb(p, "VmRSS") for p in process_tree(self.pid))

    def peak_rss_mb(self) -> float | None:
        """Sum of each process's VmHWM (an upper bound of the tree's peak)."""
        return _sum_mb(_status_mb(p, "VmHWM") for p in process_tree(self.pid))


def _sum_mb(values: Iterator[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 1) if known else None


def server_env(variant: Variant, *, port: int, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROP}
    env.update(
        {
            "MODEL_DIR": str(model_dir),
            "BOOTSTRAP_BUNDLE": str(variant.bundle.resolve()),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            **variant.env,
        }
    )
    return env


def start_server(
    variant: Variant, run_dir: Path, *, cpu: str | None, ready_timeout_s: float
) -> TreeServer:
    port = free_port()
    model_dir = run_dir / variant.name / "models"
    shutil.rmtree(model_dir, ignore_errors=True)
    server = TreeServer.start(
        server_command(variant.app, port, variant.workers),
        env=server_env(variant, port=port, model_dir=model_dir),
        port=port, cpu=cpu, log=run_dir / variant.name / "server.log",
        ready_timeout_s=ready_timeout_s,
    )  # fmt: skip
    assert isinstance(server, TreeServer)  # Server.start builds its own class
    return server


def warm_up(server: Server, path: str, workload: Workload, n: int) -> None:
    """`n` sequential requests of both kinds; every answer must be a 200 of the right shape."""
    k = int(workload.meta.get("config", {}).get("k", 10))
    for i in range(max(n, 2)):
        body = (
            workload.rerank[i % len(workload.rerank)]
            if i % 3 == 2
            else workload.full[i % len(workload.full)]
        )
        status, raw = post(server.url + path, body)
        if status != 200:
            raise RuntimeError(f"{path} answered {status} during warm-up: {raw[:500]!r}")
        if i < 3:
            answer = orjson.loads(raw)
            if not 0 < len(answer["items"]) <= k or "model_version" not in answer:
                raise RuntimeError(f"{path} answered an unexpected body: {raw[:500]!r}")


# --- sequential: one caller, one keep-alive connection ---------------------------------------
def sequential_bodies(
    workload: Workload, n: int, *, rerank_share: float = RERANK_SHARE, seed: int = 0
) -> list[tuple[str, bytes]]:
    """`n` (kind, body) pairs drawn as the locustfile draws them: a rerank body with
    probability `rerank_share`, else a full-catalog one, each uniformly from its list."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if workload.rerank and rng.random() < rerank_share:
            out.append(("rerank", rng.choice(workload.rerank)))
        else:
            out.append(("full-catalog", rng.choice(workload.full)))
    return out


def server_timing_ms(header: str | None) -> float | None:
    """The `app` entry's duration of a `Server-Timing` header (`app;dur=1.2`), ms."""
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name != "app":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    return float(value.strip().strip('"'))
                except ValueError:
                    return None
    return None


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def sequential_summary(
    server_ms: Sequence[float | None],
    client_ms: Sequence[float],
    *,
    statuses: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """p50/p90/p99 of the server's own time and of the round trip, over the answered (200)
    requests; failures are counted, never timed. Percentiles interpolate linearly (numpy)."""
    n = len(client_ms)
    statuses = list(statuses) if statuses is not None else [200] * n
    if len(server_ms) != n or len(statuses) != n or (kinds is not None and len(kinds) != n):
        raise ValueError("one server time, client time, status (and kind) per request")
    ok = [i for i in range(n) if statuses[i] == 200]

    def stats(idx: Sequence[int]) -> dict[str, Any]:
        server = [float(t) for i in idx if (t := server_ms[i]) is not None]
        client = [float(client_ms[i]) for i in idx]
        return {
            "n": len(idx),
            **{f"server_p{q}_ms": _pct(server, q) for q in (50, 90, 99)},
            **{f"client_p{q}_ms": _pct(client, q) for q in (50, 90, 99)},
            "client_mean_ms": round(sum(client) / len(client), 3) if client else None,
            "server_timing_missing": len(idx) - len(server),
        }

    out: dict[str, Any] = {
        "requests": n,
        **stats(ok),
        "failures": n - len(ok),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses)) if s != 200},
    }
    if kinds is not None:
        out["by_kind"] = {
            kind: stats([i for i in ok if kinds[i] == kind]) for kind in sorted(set(kinds))
        }
    return out


@contextlib.contextmanager
def pinned_thread(cpu: str | None) -> Iterator[bool]:
    """Run the calling thread on `cpu` (a taskset core list) inside the block, then restore
    its affinity; yields whether it was pinned (not where those cores are not ours)."""
    try:
        before = os.sched_getaffinity(0)
        cores = cpu_set(cpu) if cpu is not None else set()
    except (AttributeError, ValueError):
        yield False
        return
    if not cores or not cores <= before:
        yield False
        return
    os.sched_setaffinity(0, cores)  # pid 0: this thread only
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


def run_sequential(
    url: str,
    path: str,
    bodies: Sequence[tuple[str, bytes]],
    *,
    warmup: int,
    cpu: str | None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One caller on one keep-alive connection (`http.client`: less client overhead than
    httpx), each request sent as soon as the previous answer was read; the calling thread
    pinned to `cpu` and the garbage collector paused while it runs."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)  # TCP_NODELAY on
    headers = {"Content-Type": "application/json"}
    reconnects = 0

    def call(body: bytes) -> tuple[int, str | None]:
        nonlocal reconnects
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("server-timing")
        except (http.client.HTTPException, OSError):
            conn.close()  # http.client reconnects on the next request
            reconnects += 1
            return 0, None

    server_ms: list[float | None] = []
    client_ms: list[float] = []
    statuses: list[int] = []
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()  # this process holds the workload and histories: no collection mid-run
    try:
        with pinned_thread(cpu) as was_pinned:
            for i in range(warmup):
                call(bodies[i % len(bodies)][1])
            t_start = time.perf_counter()
            for _, body in bodies:
                t0 = time.perf_counter()
                status, timing = call(body)
                client_ms.append((time.perf_counter() - t0) * 1000)
                server_ms.append(server_timing_ms(timing))
                statuses.append(status)
            wall_s = time.perf_counter() - t_start
    finally:
        conn.close()
        if gc_was:
            gc.enable()
    summary = sequential_summary(
        server_ms, client_ms, statuses=statuses, kinds=[k for k, _ in bodies]
    )
    return {
        **summary,
        "achieved_rps": round(len(bodies) / wall_s, 1) if wall_s > 0 else None,
        "reconnects": reconnects,
        "warmup_requests": warmup,
        "client": "http.client.HTTPConnection: one keep-alive connection, TCP_NODELAY, next "
        "request sent when the previous answer was read; gc paused",
        "client_cpu": cpu,
        "client_pinned": was_pinned,
        "mix": {"full_catalog": round(1 - RERANK_SHARE, 2), "rerank": RERANK_SHARE},
        "server_time": "Server-Timing app;dur (service.logs.RequestContextMiddleware: from its "
        "entry to the response start; uvicorn's HTTP parsing and the socket are not in it), "
        "0.01 ms resolution",
        "client_time": "perf_counter around request() .. read(): the whole round trip",
    }


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


def _level_runner(
    server: Server, variant: Variant, workload_path: Path, opts: LoadOptions, tag: str
) -> Callable[[float], dict[str, Any]]:
    def run_level(offered: float) -> dict[str, Any]:
        prefix = opts.run_dir / variant.name / f"{tag}-{offered:g}"
        level = run_locust(
            server.url, offered_rps=offered, duration_s=opts.duration_s,
            workload=workload_path, path=variant.path, csv_prefix=prefix,
            user_rps=opts.user_rps, cpu=opts.load_cpu, server=server,
        )  # fmt: skip
        _log(
            f"{variant.name:>12} offered {offered:>7g} rps: achieved {level['rps'] or 0:8.1f}, "
            f"p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms, failures "
            f"{level['failures']:.2%}, server cpu {level['server_cpu']}, locust cpu "
            f"{level['locust_cpu']}" + (f" ({flags(level)})" if flags(level) else "")
        )
        return level

    return run_level


def run_variant(
    variant: Variant,
    workload: Workload,
    workload_path: Path,
    opts: LoadOptions,
    *,
    levels: Sequence[float],
    refine: int,
    min_rps: float,
    wrk: dict[str, Any] | None,
) -> dict[str, Any]:
    """Start the variant's server, climb its ladder, measure what else it needs, stop it."""
    cpu = variant.cpu if variant.cpu is not None else opts.server_cpu
    _log(f"{variant.name}: starting {variant.app} ({variant.workers} worker(s), cores {cpu}) "
         f"on {variant.bundle}")  # fmt: skip
    t0 = time.monotonic()
    server = start_server(variant, opts.run_dir, cpu=cpu, ready_timeout_s=opts.ready_timeout_s)
    with server:
        startup_s = time.monotonic() - t0
        warm_up(server, variant.path, workload, opts.warmup)
        sequential = None
        if variant.name == "shipped" and opts.sequential > 0:
            # Before the ladder: a quiet, warm server, as a storefront's page view finds it.
            sequential = run_sequential(
                server.url, variant.path,
                sequential_bodies(workload, opts.sequential, seed=opts.seed),
                warmup=SEQUENTIAL_WARMUP, cpu=opts.load_cpu,
            )  # fmt: skip
            _log(
                f"{variant.name} sequential: {sequential['n']} requests, server p50 "
                f"{sequential['server_p50_ms']} ms p99 {sequential['server_p99_ms']} ms; "
                f"client p50 {sequential['client_p50_ms']} ms p99 "
                f"{sequential['client_p99_ms']} ms; failures {sequential['failures']}"
            )
        run_level = _level_runner(server, variant, workload_path, opts, "level")
        done = climb(levels, run_level, refine=refine, min_rps=min_rps)
        best = max_rps(done)
        out: dict[str, Any] = {
            "name": variant.name,
            "description": variant.description,
            "server": shlex.join(server_command(variant.app, 0, variant.workers)).replace(
                "--port 0", "--port PORT"
            ),
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
        }
        at_max = [lv for lv in done if qualifies(lv) and lv.get("rps") == best]
        out["locust_limited"] = any(lv["locust_limited"] for lv in at_max)
        if variant.name == "shipped" and best:
            level = _level_runner(server, variant, workload_path, opts, "at70")(
                round(LOAD_SHARE_AT * best, 1)
            )
            out["p99_at_70pct"] = {**level, "of_max_rps": best}
        out["rss_mb"] = server.rss_mb()
        out["peak_rss_mb"] = server.peak_rss_mb()
        if sequential is not None:
            out["sequential"] = sequential
        if wrk is not None and (variant.name == "ceiling" or out["locust_limited"]):
            _log(f"{variant.name}: wrk, {wrk['connections']} connections")
            out["wrk"] = run_wrk(
                server.url + variant.path, body=workload.full[0], duration_s=wrk["duration_s"],
                connections=wrk["connections"], cpu=opts.load_cpu,
                script_path=opts.run_dir / variant.name / "wrk.lua",
            )  # fmt: skip
            if out["wrk"] is None:
                out["wrk"] = {"error": "wrk is not installed (apt-get install wrk)"}
    return out


# --- scale: larger catalogs at one offered load ------------------------------------------------
# >>> run_scale: the lead supplies (label, bundle_dir, recall@10) for each catalog, e.g.
# >>> [("54k exact", Path("benchmarks/work/amazon-beauty/bench-beauty"), 1.0),
# >>>  ("1M", Path("benchmarks/work/catalog-1m"), 0.97)]; on the command line:
# >>> --scale "1M=benchmarks/work/catalog-1m:0.97" (repeatable).
def run_scale(
    entries: Sequence[tuple[str, Path, float | None]],
    *,
    offered_rps: float,
    opts: LoadOptions,
    histories: list[list[str]] | None,
    workload_config: WorkloadConfig,
    batch_max_size: int = SHIPPED_BATCH,
    extra_env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Serve each bundle like `shipped` (the real service, micro-batching on) at one offered
    load; latency, and the server's resident memory (VmRSS of /proc/<pid>/status) after it.

    `recall` is reported as given (recall@10 of that bundle's search against exact search, as
    measured by whoever made it); None when not known. Histories come from the data when
    enough of them are in the bundle's catalog, else from its vocabulary. `extra_env` goes to
    every scale server (e.g. {"ANN_NPROBE": "32"})."""
    from benchmarks.workload import read_vocab

    out: list[dict[str, Any]] = []
    for label, bundle_dir, recall in entries:
        manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
        vocab = read_vocab(bundle_dir / "vocab.json")
        known = set(vocab)
        hist = None
        if histories is not None:
            hist = [kept for h in histories if (kept := [i for i in h if i in known])]
        workload = build_workload(vocab, hist, workload_config, source="data")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        wpath = workload.save(opts.run_dir / f"scale-{safe}" / "workload.json")
        variant = Variant(
            name=f"scale-{safe}", description=f"scale: {label}", app="service.main:create_app",
            bundle=bundle_dir, env={"BATCH_MAX_SIZE": str(batch_max_size), **(extra_env or {})},
        )  # fmt: skip
        _log(f"scale {label}: {manifest['n_items']} items at {offered_rps:g} rps")
        with start_server(variant, opts.run_dir, cpu=opts.server_cpu,
                          ready_timeout_s=opts.ready_timeout_s) as server:  # fmt: skip
            rss_idle = server.rss_mb()
            warm_up(server, variant.path, workload, opts.warmup)
            level = _level_runner(server, variant, wpath, opts, "scale")(offered_rps)
            rss = server.rss_mb()
        out.append(
            {
                "label": label,
                "bundle": str(bundle_dir),
                "items": int(manifest["n_items"]),
                "dim": int(manifest["dim"]),
                "item_encoding": manifest["item_encoding"],
                "histories": workload.meta["histories"],
                "offered_rps": level["offered_rps"],
                "rps": level["rps"],
                "p50_ms": level["p50_ms"],
                "p99_ms": level["p99_ms"],
                "failures": level["failures"],
                "recall@10": recall,
                "rss_mb": rss,
                "rss_idle_mb": rss_idle,
                "env": variant.env,
            }
        )
    return out


def default_scale_entries(
    shipped: Path,
    run_dir: Path,
    histories: list[list[str]],
    *,
    grow_to: int,
    seed: int,
    env: dict[str, str] | None = None,
) -> list[tuple[str, Path, float | None]]:
    """The shipped catalog, and (grow_to > 0) the same catalog grown to `grow_to` items, each
    with the recall@10 of the service's answers against exact scoring, measured here on real
    histories (`benchmarks.catalog.serving_recall`)."""
    from benchmarks.catalog import grow_bundle, serving_recall
    from benchmarks.workload import read_vocab

    if not histories:  # no data file: histories from the catalog itself
        vocab = read_vocab(shipped / "vocab.json")[1:]
        rng = np.random.default_rng(seed)
        histories = [list(rng.choice(vocab, size=8)) for _ in range(1000)]
    bundles = [("shipped", shipped)]
    if grow_to > 0:
        _log(f"growing {shipped} to {grow_to:,} items")
        grown = grow_bundle(shipped, run_dir / f"catalog-{grow_to}", grow_to, noise=0.3, seed=seed)
        bundles.append((f"grown to {grow_to:,}", grown))
    out: list[tuple[str, Path, float | None]] = []
    for name, path in bundles:
        measured = serving_recall(path, histories, seed=seed, env=env)
        n_items = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["n_items"]
        _log(f"{name}: {n_items:,} items, {measured['search']}, recall@10 {measured['recall@10']}")
        out.append(
            (f"{name} ({n_items:,} items, {measured['search']})", path, measured["recall@10"])
        )
    return out


def parse_scale(items: Sequence[str]) -> list[tuple[str, Path, float | None]]:
    """`LABEL=BUNDLE_DIR[:RECALL]` -> (label, dir, recall)."""
    out = []
    for item in items:
        label, sep, rest = item.partition("=")
        if not sep or not label:
            raise ValueError(f"--scale takes LABEL=BUNDLE_DIR[:RECALL], not {item!r}")
        path, recall = rest, None
        head, colon, tail = rest.rpartition(":")
        if colon:
            try:
                recall = float(tail)
                path = head
            except ValueError:
                pass
        if not (Path(path) / "manifest.json").is_file():
            raise ValueError(f"--scale {label}: {path} is not a bundle directory")
        out.append((label, Path(path), recall))
    return out


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, not {item!r}")
    return key, value


# --- targets ---------------------------------------------------------------------------------
def _target(value: float | None, threshold: float, op: str, what: str) -> dict[str, Any]:
    """Judged on the measured value itself; `value` is shown rounded to 4 decimals (so 0.69983
    shows as 0.6998 and fails a 0.7 target rather than passing as a rounded 0.7)."""
    passed = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    shown = None if value is None else round(value, 4)
    return {"value": shown, "threshold": threshold, "op": op, "passed": passed, "what": what}


def _ratio(a: float | None, b: float | None, digits: int | None = 3) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b if digits is None else round(a / b, digits)


def p50_vs_ceiling(
    variants: Sequence[dict[str, Any]],
    *,
    share: float = P50_COMPARE_SHARE,
    target_ms: float = TARGET_P50_EXCESS_MS,
) -> dict[str, Any]:
    """shipped's p50 against the ceiling's at the same offered load, for every level of
    shipped's ladder up to `share` of its max rps (at p99 <= 50 ms). Only an exact match of
    offered load is compared: a level the ceiling did not run (a refinement level, say) is
    listed with `ceiling_p50_ms` None and `passed` None, never interpolated."""
    by = {v["name"]: v for v in variants}
    shipped, ceiling = by.get("shipped"), by.get("ceiling")
    best = shipped.get("max_rps_at_p99_50ms") if shipped else None
    out: dict[str, Any] = {
        "shipped_max_rps": best,
        "share": share,
        "up_to_offered": None if best is None else round(share * best, 1),
        "target_excess_ms": target_ms,
        "levels": [],
    }
    if shipped is None or best is None:
        out["note"] = "shipped not run" if shipped is None else "shipped has no max rps"
        return out
    ceiling_at = {round(lv["offered_rps"], 1): lv for lv in (ceiling or {}).get("levels", [])}
    for lv in sorted(shipped["levels"], key=lambda x: x["offered_rps"]):
        if lv["offered_rps"] > share * best:
            continue
        c = ceiling_at.get(round(lv["offered_rps"], 1))
        s50, c50 = lv.get("p50_ms"), c.get("p50_ms") if c else None
        row: dict[str, Any] = {
            "offered": lv["offered_rps"],
            "shipped_p50_ms": s50,
            "ceiling_p50_ms": c50,
            "excess_ms": None,
            "passed": None,
        }
        if c is None:
            row["note"] = "the ceiling did not run this offered load: not compared"
        elif c50 is None:
            row["note"] = "the ceiling has no p50 at this offered load: not compared"
        elif s50 is None:
            row["passed"] = False
            row["note"] = "shipped has no p50 at this offered load"
        else:
            row["excess_ms"] = round(s50 - c50, 3)
            row["passed"] = row["excess_ms"] <= target_ms
        out["levels"].append(row)
    if not out["levels"]:
        out["note"] = "no level of shipped's ladder at or below this share of its max rps"
    return out


def workers_comparison(
    variants: Sequence[dict[str, Any]], *, load_cpu: str | None, cores: int | None = None
) -> dict[str, Any] | None:
    """Max rps at p99 <= 50 ms of shipped (1 worker) and shipped_2w (2 workers), the ratio,
    and how busy the machine was at each one's max; None when shipped_2w did not run."""
    by = {v["name"]: v for v in variants}
    if WORKERS_VARIANT not in by:
        return None

    def side(v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        best = v["max_rps_at_p99_50ms"]
        at = [lv for lv in v["levels"] if qualifies(lv) and lv.get("rps") == best]
        lv = at[0] if at else {}
        busy: list[float | None] = [lv.get("server_cpu"), lv.get("locust_cpu")]
        return {
            "variant": v["name"],
            "workers": v.get("workers", 1),
            "server_cpu": v.get("server_cpu"),
            "max_rps_at_p99_50ms": best,
            "ladder_exhausted": v.get("ladder_exhausted"),
            "p99_ms_at_max": lv.get("p99_ms"),
            "server_cores_busy_at_max": lv.get("server_cpu"),
            "locust_cores_busy_at_max": lv.get("locust_cpu"),
            "cores_busy_at_max": (
                round(sum(b for b in busy if b is not None), 2) if None not in busy else None
            ),
            "locust_limited": v.get("locust_limited"),
        }

    one, two = side(by.get("shipped")), side(by[WORKERS_VARIANT])
    assert two is not None
    shared = _shares(two["server_cpu"], load_cpu)
    note = (
        f"1 worker on core {one['server_cpu'] if one else '?'} (the shipped ladder) against "
        f"{two['workers']} workers on cores {two['server_cpu']}, the load generator on core "
        f"{load_cpu} in both."
    )
    if shared:
        note += (
            f" The load generator shares core(s) {shared} with a worker (the machine has "
            f"{cores or '?'} cores): the ratio is a lower bound of what a core dedicated to "
            "the second worker would give, a cores-busy total near the machine's core count "
            "means the machine, not the service, set the figure, and locust_limited (locust "
            ">= 90% of a core) cannot fire while locust shares its core."
        )
    return {
        "one_worker": one,
        "two_workers": two,
        "ratio": _ratio(two["max_rps_at_p99_50ms"], one["max_rps_at_p99_50ms"] if one else None),
        "machine_cores": cores,
        "load_cpu": load_cpu,
        "load_cpu_shared": bool(shared),
        "note": note,
    }


def _shares(a: str | None, b: str | None) -> str:
    """The cores two taskset core lists have in common, as a list ("" for none)."""
    try:
        common = cpu_set(a) & cpu_set(b) if a and b else set()
    except ValueError:
        return ""
    return ",".join(map(str, sorted(common)))


def evaluate_targets(
    variants: Sequence[dict[str, Any]], *, sequential: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every target from measured numbers only; a figure not measured never passes."""
    by = {v["name"]: v for v in variants}

    def best(name: str) -> float | None:
        return by[name]["max_rps_at_p99_50ms"] if name in by else None

    at70 = by.get("shipped", {}).get("p99_at_70pct") or {}
    compared = [r for r in p50_vs_ceiling(variants)["levels"] if r["passed"] is not None]
    excess = [r["excess_ms"] for r in compared if r["excess_ms"] is not None]
    seq = sequential or {}
    t = {
        "shipped_vs_ceiling": _target(
            _ratio(best("shipped"), best("ceiling"), None), TARGET_VS_CEILING, ">=",
            "shipped max rps at p99 ≤ 50 ms / ceiling's",
        ),
        "shipped_vs_naive": _target(
            _ratio(best("shipped"), best("naive"), None), TARGET_VS_NAIVE, ">=",
            "shipped max rps at p99 ≤ 50 ms / naive's (PyTorch fp32 teacher, one at a time)",
        ),
        "shipped_p99_at_70pct_ms": _target(
            at70.get("p99_ms"), TARGET_P99_AT_70PCT_MS, "<=",
            "shipped p99 (ms) at 70% of its own max rps",
        ),
        "shipped_p50_excess_ms": _target(
            max(excess) if excess else None, TARGET_P50_EXCESS_MS, "<=",
            f"worst shipped p50 - ceiling p50 (ms), same offered load, every level up to "
            f"{P50_COMPARE_SHARE:.0%} of shipped's max rps ({len(compared)} compared)",
        ),
        "sequential_server_p50_ms": _target(
            seq.get("server_p50_ms"), TARGET_SEQ_SERVER_P50_MS, "<=",
            "one caller, back to back: p50 of the server's own time (Server-Timing)",
        ),
        "sequential_client_p50_ms": _target(
            seq.get("client_p50_ms"), TARGET_SEQ_CLIENT_P50_MS, "<=",
            "one caller, back to back: p50 of the round trip (one keep-alive connection)",
        ),
    }  # fmt: skip
    # A level compared and failed fails the target even if `max` was within (a None excess).
    if any(r["passed"] is False for r in compared):
        t["shipped_p50_excess_ms"]["passed"] = False
    return {"all_passed": all(v["passed"] for v in t.values()), **t}


# --- the run ---------------------------------------------------------------------------------
def resolve_inputs(
    data: Path, bundle_arg: Path | None, work: Path
) -> tuple[Path | None, Path, dict[str, Any]]:
    """(data file or None, shipped bundle, provenance): the fallbacks, recorded."""
    from benchmarks.serve_bundles import newest_bundle, speed_only_bundle, synthetic_catalog

    info: dict[str, Any] = {"data_given": str(data), "data_found": data.is_file()}
    if not data.is_file():
        _log(f"{data} not found: synthetic catalog of 54,542 items (models.synthetic)")
        synth_data, synth_bundle = synthetic_catalog(work / "synthetic")
        info["histories_from"] = f"{synth_data} (synthetic, models.synthetic)"
        if bundle_arg is None:
            info["bundle_source"] = "speed-only bundle (random-init pruned student, INT8)"
            return synth_data, synth_bundle, info
        info["bundle_source"] = "--bundle"
        return synth_data, bundle_arg, info
    info["histories_from"] = str(data)
    if bundle_arg is not None:
        info["bundle_source"] = "--bundle"
        return data, bundle_arg, info
    found = newest_bundle(work / data.stem)
    if found is not None:
        info["bundle_source"] = f"newest bundle under {work / data.stem} (make bench-compress)"
        return data, found, info
    _log(f"no bundle under {work / data.stem}: building a speed-only one (random weights)")
    info["bundle_source"] = (
        f"speed-only bundle: no `make bench-compress` bundle under {work / data.stem}; "
        "random-init pruned student of the Beauty recipe's shape, INT8, the data's catalog"
    )
    return data, speed_only_bundle(data, work / "speed-only" / data.stem), info


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
    from benchmarks.serve_bundles import (
        RANDOM_INIT,
        architecture_for,
        fp32_student_bundle,
        params_of,
        read_manifest_dict,
    )

    manifest = read_manifest_dict(shipped)
    out: list[Variant] = []
    for name in names:
        if name == "ceiling":
            out.append(Variant(
                name, "service.main.create_app + POST /bench/constant (same parsing, constant "
                "answer)", "benchmarks.apps:ceiling_app", shipped, path=CONSTANT_PATH,
            ))  # fmt: skip
        elif name == "naive":
            config, source = architecture_for(manifest, "teacher")
            have = teacher_ckpt is not None and teacher_ckpt.is_file()
            env = {"NAIVE_BUNDLE": str(shipped.resolve())}
            if have and teacher_ckpt is not None:
                env["NAIVE_CHECKPOINT"] = str(teacher_ckpt.resolve())
            out.append(Variant(
                name, "teacher SASRec in PyTorch fp32, 1 thread, one request at a time, "
                "full-catalog matmul + topk", "benchmarks.apps:naive_app", shipped, env=env,
                info={"architecture": config, "architecture_source": source,
                      "params": params_of(config),
                      "weights": f"trained ({teacher_ckpt})" if have else RANDOM_INIT},
            ))  # fmt: skip
        elif name == "student_fp32":
            bundle_dir, info = fp32_student_bundle(
                shipped, run_dir / "student-fp32-bundle", which=student_arch,
                checkpoint=student_ckpt,
            )  # fmt: skip
            out.append(Variant(
                name, "the service, micro-batching off (BATCH_MAX_SIZE=1), fp32 student "
                "(fp32 ONNX, fp32 items)", "service.main:create_app", bundle_dir,
                env={"BATCH_MAX_SIZE": "1"}, info=info,
            ))  # fmt: skip
        elif name == "shipped":
            out.append(Variant(
                name, f"the service, BATCH_MAX_SIZE={batch_max_size}, the shipped bundle",
                "service.main:create_app", shipped, env={"BATCH_MAX_SIZE": str(batch_max_size)},
                info={"item_encoding": manifest["item_encoding"],
                      "weights": bundle_weights(manifest)},
            ))  # fmt: skip
        elif name == WORKERS_VARIANT:
            out.append(Variant(
                name, f"shipped with WORKERS={WORKERS_2W} (uvicorn --workers "
                f"{WORKERS_2W}, service.main:worker_app) on cores {workers_cpu}",
                "service.main:worker_app", shipped,
                env={"BATCH_MAX_SIZE": str(batch_max_size), "WORKERS": str(WORKERS_2W)},
                info={"item_encoding": manifest["item_encoding"],
                      "weights": bundle_weights(manifest)},
                workers=WORKERS_2W, cpu=workers_cpu,
            ))  # fmt: skip
    return out


def bundle_weights(manifest: dict[str, Any]) -> str:
    recipe = manifest.get("recipe") or {}
    if "weights" in recipe:
        return str(recipe["weights"])
    if "teacher" in recipe and "distillation" in recipe:
        return "trained (models.compress)"
    return "as the bundle's manifest says (recipe)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serve", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="interactions file for real histories (absent: synthetic catalog)")  # fmt: skip
    p.add_argument("--bundle", type=Path, default=None,
                   help="shipped bundle dir (default: newest under <work>/<data stem>/)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("benchmarks/work"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)}")  # fmt: skip
    p.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)),
                   help="offered loads, rps, ascending")  # fmt: skip
    p.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    p.add_argument("--refine", type=int, default=4,
                   help="extra levels narrowing each variant's p99 ≤ 50 ms bound")  # fmt: skip
    p.add_argument("--user-rps", type=float, default=10.0,
                   help="request rate of one locust user (Poisson); users = offered / this")  # fmt: skip
    p.add_argument("--min-rps", type=float, default=MIN_RPS,
                   help="lowest load tried below the ladder for a variant over 50 ms at its "
                   "first level")  # fmt: skip
    p.add_argument("--warmup", type=int, default=200, help="sequential requests before a ladder")
    p.add_argument("--server-cpu", default="0", help="taskset core list of the servers")
    p.add_argument("--load-cpu", default="1",
                   help="taskset core list of locust, wrk and the sequential client")  # fmt: skip
    p.add_argument("--workers-cpu", default="0-1",
                   help=f"taskset core list of {WORKERS_VARIANT}'s server (its second worker "
                   "shares the load core on a 2-core machine)")  # fmt: skip
    p.add_argument("--no-workers", action="store_true",
                   help=f"leave out {WORKERS_VARIANT} (the 1 vs 2 workers comparison)")  # fmt: skip
    p.add_argument("--sequential", type=int, default=SEQUENTIAL_N, metavar="N",
                   help="shipped, one caller on one keep-alive connection: N requests back to "
                   "back (0 = skip)")  # fmt: skip
    p.add_argument("--batch-max-size", type=int, default=SHIPPED_BATCH)
    p.add_argument("--teacher-checkpoint", type=Path, default=None,
                   help="state dict of the teacher (default: <work>/<data stem>/teacher.pt)")  # fmt: skip
    p.add_argument("--student-checkpoint", type=Path, default=None,
                   help="state dict of the student (default: <work>/<data stem>/student.pt)")  # fmt: skip
    p.add_argument("--student-arch", choices=["student", "pruned"], default="student",
                   help="student_fp32 shape: the distilled student or the pruned one")  # fmt: skip
    p.add_argument("--no-wrk", action="store_true", help="skip wrk")
    p.add_argument("--wrk-duration", type=float, default=None, help="default: --duration")
    p.add_argument("--wrk-connections", type=int, default=50)
    p.add_argument("--scale", action="append", default=[], metavar="LABEL=DIR[:RECALL]",
                   help="a bundle for the scale table (default: the shipped bundle)")  # fmt: skip
    p.add_argument("--scale-rps", type=float, default=None,
                   help="offered load of the scale runs (default: 70%% of shipped's max)")  # fmt: skip
    p.add_argument("--scale-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the scale servers, e.g. ANN_NPROBE=32 (repeatable)")  # fmt: skip
    p.add_argument("--scale-items", type=int, default=1_000_000,
                   help="without --scale: also grow the shipped catalog to this many items "
                   "(benchmarks.catalog.grow_bundle, noise 0.3) and serve it; 0 = no")  # fmt: skip
    p.add_argument("--no-scale", action="store_true")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        parser.error("the load generator needs locust: pip install -e '.[bench]'")
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plot needs matplotlib: pip install -e '.[bench]' (or --no-plot)")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown or not names:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if args.no_workers:
        names = [n for n in names if n != WORKERS_VARIANT]
    if args.sequential < 0:
        parser.error("--sequential: a number of requests, 0 to skip")
    try:
        levels = sorted(float(x) for x in args.levels.split(",") if x.strip())
        scale_entries = parse_scale(args.scale)
        scale_env = dict(_key_value(kv) for kv in args.scale_env)
    except ValueError as e:
        parser.error(str(e))
    if not levels or levels[0] <= 0:
        parser.error("--levels: positive offered loads")
    if args.bundle is not None and not (args.bundle / "manifest.json").is_file():
        parser.error(f"--bundle {args.bundle}: not a bundle directory")

    command = shlex.join([python_exe(), "-m", "benchmarks.serve", *argv])
    _log(command)
    work: Path = args.work
    run_dir = work / "serve"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    data, shipped, provenance = resolve_inputs(args.data, args.bundle, work)
    from models.compress import checkpoint_dir

    # run_compress keeps each stage's weights beside the bundle it shipped.
    ckpt_dir = checkpoint_dir(shipped.parent, shipped.name)
    teacher_ckpt = args.teacher_checkpoint or ckpt_dir / "teacher.pt"
    student_ckpt = args.student_checkpoint or ckpt_dir / "student.pt"

    from benchmarks.serve_bundles import read_manifest_dict
    from benchmarks.workload import read_vocab

    manifest = read_manifest_dict(shipped)
    vocab = read_vocab(shipped / "vocab.json")
    histories = histories_from_data(data, vocab=vocab) if data is not None else None
    wconfig = WorkloadConfig(seed=args.seed)
    workload = build_workload(vocab, histories, wconfig, source=str(data))
    workload_path = workload.save(run_dir / "workload.json")
    _log(f"workload: {workload.meta['histories']} histories ({len(histories or [])} users), "
         f"mean length {workload.meta['mean_history_len']}, catalog {len(vocab)} items")  # fmt: skip

    variants = make_variants(
        names, shipped, run_dir, teacher_ckpt=teacher_ckpt, student_ckpt=student_ckpt,
        student_arch=args.student_arch, batch_max_size=args.batch_max_size,
        workers_cpu=args.workers_cpu,
    )  # fmt: skip
    opts = LoadOptions(
        duration_s=args.duration, user_rps=args.user_rps, server_cpu=args.server_cpu,
        load_cpu=args.load_cpu, warmup=args.warmup, ready_timeout_s=args.ready_timeout,
        run_dir=run_dir, sequential=args.sequential, seed=args.seed,
    )  # fmt: skip
    wrk = None if args.no_wrk else {
        "duration_s": args.wrk_duration or args.duration, "connections": args.wrk_connections,
    }  # fmt: skip
    probe_prefix = pinned([], args.server_cpu)
    host = host_info(probe_prefix)
    _log(f"host: {host['cpu_mhz']} MHz, caches {host['caches']}, Python probe "
         f"{host['python_probe_ms']['start']} ms")  # fmt: skip
    results_v = []
    for v in variants:
        result = run_variant(
            v, workload, workload_path, opts, levels=levels, refine=args.refine,
            min_rps=args.min_rps, wrk=wrk,
        )  # fmt: skip
        results_v.append(result)
    by = {v["name"]: v for v in results_v}
    sequential = by["shipped"].pop("sequential", None) if "shipped" in by else None

    scale: list[dict[str, Any]] = []
    if not args.no_scale:
        entries = scale_entries or default_scale_entries(
            shipped, run_dir, histories or [], grow_to=args.scale_items, seed=args.seed,
            env=scale_env,
        )  # fmt: skip
        shipped_max = by.get("shipped", {}).get("max_rps_at_p99_50ms")
        rps = args.scale_rps or (round(LOAD_SHARE_AT * shipped_max, 1) if shipped_max else 500.0)
        scale = run_scale(
            entries, offered_rps=rps, opts=opts, histories=histories, workload_config=wconfig,
            batch_max_size=args.batch_max_size, extra_env=scale_env,
        )  # fmt: skip

    host["python_probe_ms"]["end"] = python_probe_ms(probe_prefix)
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain")
    ceiling_wrk = by.get("ceiling", {}).get("wrk")
    if wrk is None:
        ceiling_wrk = {"error": "skipped (--no-wrk)"}
    results: dict[str, Any] = {
        "benchmark": "serving (issue 4)",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": host,
        "python": platform.python_version(),
        "versions": {
            p: _version(p) for p in ("locust", "uvicorn", "fastapi", "onnxruntime", "torch")
        },
        "wall_seconds": None,
        "pinning": {
            "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu,
            "server_pinned": can_pin(args.server_cpu),
            "load_pinned": can_pin(args.load_cpu),
            "workers_cpu": args.workers_cpu if WORKERS_VARIANT in names else None,
        },
        "load": {
            "tool": "locust (FastHttpUser, headless, one process)",
            "duration_s": args.duration,
            "user_rps": args.user_rps,
            "ladder": levels,
            "refine": args.refine,
            "p99_limit_ms": P99_LIMIT_MS,
            "stop_p99_ms": STOP_P99_MS,
            "stop_rule": f"after the first level with p99 > {STOP_P99_MS:g} ms or failures > "
            f"{STOP_FAILURES:.0%}",
            "mix": {"full_catalog": 0.7, "rerank": 0.3},
            "workload": workload.meta,
            "warmup_requests": args.warmup,
        },
        "inputs": provenance,
        "bundle": {
            "path": str(shipped),
            "version": manifest["model_version"],
            "n_items": manifest["n_items"],
            "dim": manifest["dim"],
            "max_len": manifest["max_len"],
            "item_encoding": manifest["item_encoding"],
        },
        "variants": results_v,
        "sequential": sequential,
        "p50_vs_ceiling": p50_vs_ceiling(results_v),
        "workers": workers_comparison(results_v, load_cpu=args.load_cpu, cores=os.cpu_count()),
        "ceiling_wrk": ceiling_wrk,
        "scale": scale,
        "targets": evaluate_targets(results_v, sequential=sequential),
        "notes": NOTES,
    }
    results["wall_seconds"] = round(time.monotonic() - t_start, 1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")  # fmt: skip
    markdown = render_markdown(results)
    (out / "serve.md").write_text(markdown, encoding="utf-8")
    written = [out / "serve.json", out / "serve.md"]
    if not args.no_plot:
        render_plot(results, out / "serve.png")
        written.append(out / "serve.png")
    print()
    print(markdown)
    for p in written:
        _log(f"wrote {p}")
    _log(f"wall time {results['wall_seconds']:.0f} s; targets "
         f"{'PASS' if results['targets']['all_passed'] else 'FAIL'}")  # fmt: skip
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
    "p50 against the ceiling: locust's p50 is in whole milliseconds, so excess_ms is too; only "
    "levels with the same offered load are compared (no interpolation).",
    "sequential: the server's time is its Server-Timing header (0.01 ms resolution, from "
    "RequestContextMiddleware's entry to the response start); the client's, the round trip "
    "on one keep-alive connection, client pinned to the load core, gc paused.",
]


if __name__ == "__main__":
    sys.exit(main())
