"""Swap benchmark (issue 5): a two-replica fleet swapping models under load, memory over many
swaps, Redis stopped under load, the API fuzzer and the malicious-bundle corpus.

    make bench-swap [DATA=../shared/data/amazon-beauty.txt] [SWAP_ARGS='--cycles 100']
    python -m benchmarks.swap --data ../shared/data/amazon-beauty.txt [--bundle DIR]

One Redis (a private redis-server, saving to disk so a restart keeps its data) and two
service replicas sharing it, both pinned to core 0; locust pinned to core 1 sends every
request round-robin to the two replicas (`LOCUST_HOSTS`) and records each answer's status,
latency and model version (`LOCUST_TRACE`). The served model is the bundle `make
bench-compress` shipped (else a speed-only one, as `benchmarks.serve` picks it), installed
under three version names, `swap-a`, `swap-b` and `swap-c`. Phases, in order:

1. capacity: a saturating locust run; the load of the later phases is `--load` (70%) of the
   throughput it achieved;
2. steady: `--steady` seconds at that load, no swaps: the steady p99;
3. swaps: `--duration` seconds at that load with `--swaps` activations alternating swap-b /
   swap-a, sent alternately to each replica; each waits until the other replica serves it too.
   "During swaps" = requests started between an activation call and 0.5 s after the whole
   fleet served the new version. The first swap activates swap-b, the last upload: r1 holds
   it loaded from the upload's validation and r2 from r1's announcement (`prepare`), which
   the fleet start waits for. Every later swap's version is each replica's standby (the
   previously active model, kept loaded). A swap is "warm" when every replica held its
   version loaded, "cold" otherwise; the report gives both;
4. memory: `--cycles` cycles of two activations rotating swap-b, swap-c, swap-a (no load),
   so every activation loads from disk on both replicas (cold): resident size of both
   replicas after every cycle, and the slowest of these cold activations fleet-wide;
5. Redis outage: `--outage-run` seconds at the load, Redis stopped for `--outage` seconds in
   the middle, /readyz polled on both replicas;
6. hostile input: the malicious-bundle corpus (`benchmarks.hostile`, the replicas run with
   the accuracy and latency gates on), then the schemathesis fuzzer (`benchmarks.fuzz`).

Writes benchmarks/results/swap.json, swap.md and swap.png (latency over the swap phase with
the swaps marked; resident size over the swap cycles).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import secrets
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.loadgen import REPO, Server, free_port, run_locust
from benchmarks.provenance import cpu_model, git, python_exe

PREFIX = "swapbench"
VERSIONS = ("swap-a", "swap-b")
# The memory phase rotates through three versions: each replica keeps the previous version
# loaded (its standby), so with two every activation after the first would be a reference
# swap; with three, every activation loads its version from disk.
MEMORY_VERSIONS = (*VERSIONS, "swap-c")
APP = "service.main:create_app"
# Gates on while the corpus runs (so each gate has a case): generous, so valid swaps pass.
GATE_ENV = {"GATE_MAX_NDCG_DROP": "0.05", "GATE_MAX_LATENCY_MS": "50"}
FLEET_WAIT_S = 5.0
AFTER_SWAP_S = 0.5
TARGET_P99_RATIO = 1.5
TARGET_PROPAGATION_S = 2.0
TARGET_RSS_GROWTH = 0.10


def _log(msg: str) -> None:
    print(f"[bench-swap] {msg}", file=sys.stderr, flush=True)


# --- trace -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    start: float  # unix seconds
    ms: float
    status: int
    version: str
    host: int


def read_trace(path: Path) -> list[Answer]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        t, ms, status, version, host = line.split(",")
        out.append(Answer(float(t), float(ms), int(status), version, int(host)))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)


def in_windows(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(lo <= t <= hi for lo, hi in windows)


def summarize(answers: Sequence[Answer], *, skip_s: float = 0.0) -> dict[str, Any]:
    """Counts and latency percentiles of a run's answers (the first `skip_s` seconds left out
    of the percentiles, not of the counts)."""
    t0 = min((a.start for a in answers), default=0.0)
    timed = [a.ms for a in answers if a.start >= t0 + skip_s]
    return {
        "requests": len(answers),
        "failed": sum(1 for a in answers if a.status != 200),
        "p50_ms": percentile(timed, 50),
        "p99_ms": percentile(timed, 99),
        "max_ms": round(max(timed), 2) if timed else None,
        "versions_seen": sorted({a.version for a in answers if a.status == 200}),
        "statuses": {
            str(s): sum(1 for a in answers if a.status == s)
            for s in sorted({a.status for a in answers})
        },
    }


# --- the fleet -------------------------------------------------------------------------------
@dataclass
class Fleet:
    redis: Any  # tests.factories.RedisServer
    replicas: list[Server]
    token: str

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def status(self, i: int) -> dict[str, Any]:
        r = httpx.get(self.urls[i] + "/admin/status", headers=self.headers, timeout=10)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def readyz(self, i: int) -> str:
        try:
            r = httpx.get(self.urls[i] + "/readyz", timeout=2)
            return str(r.json().get("status", r.status_code))
        except (httpx.HTTPError, ValueError) as e:
            return f"error: {type(e).__name__}"

    def activate(self, i: int, version: str) -> tuple[int, str]:
        r = httpx.post(
            f"{self.urls[i]}/admin/bundles/{version}/activate", headers=self.headers, timeout=120
        )
        return r.status_code, r.text[:300]

    def wait_serving(self, version: str, timeout_s: float = FLEET_WAIT_S) -> float | None:
        """Seconds until every replica serves `version`; None if one did not in time."""
        return self._wait_status("serving", version, timeout_s, poll_s=0.02)

    def wait_prepared(self, version: str, timeout_s: float) -> float | None:
        """Seconds until every replica holds `version` loaded ahead (`prepared` in
        /admin/status: the uploading replica at once, the others when it announced it)."""
        return self._wait_status("prepared", version, timeout_s, poll_s=0.05)

    def _wait_status(
        self, field: str, version: str, timeout_s: float, *, poll_s: float
    ) -> float | None:
        """Seconds until /admin/status says `field` is `version` on every replica; None if a
        replica did not get there in time."""
        t0 = time.monotonic()
        pending = set(range(len(self.replicas)))
        while pending and time.monotonic() - t0 < timeout_s:
            pending = {i for i in pending if self.status(i)[field] != version}
            if pending:
                time.sleep(poll_s)
        return None if pending else time.monotonic() - t0

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        self.redis.stop()


def replica_env(
    *, redis_url: str, replica: str, port: int, model_dir: Path, token: str,
    bootstrap: Path | None,
) -> dict[str, str]:  # fmt: skip
    drop = {"REDIS_URL", "ADMIN_TOKEN", "BOOTSTRAP_BUNDLE", "MODEL_DIR", "PORT", "HOST",
            "REPLICA_ID", "REDIS_KEY_PREFIX", "ANSWER_CACHE_TTL_S"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        {
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": PREFIX,
            "REPLICA_ID": replica,
            "ADMIN_TOKEN": token,
            "MODEL_DIR": str(model_dir),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            **GATE_ENV,
        }
    )
    if bootstrap is not None:
        env["BOOTSTRAP_BUNDLE"] = str(bootstrap)
    return env


def start_fleet(work: Path, archives: dict[str, Path], *, cpu: str | None) -> Fleet:
    """Redis, replica r1 bootstrapped with swap-a (which it shares through Redis), replica r2
    started empty (it follows the fleet), and swap-b uploaded through r1's admin API."""
    from benchmarks.serve import server_command
    from tests.factories import RedisServer

    (work / "redis").mkdir(parents=True)
    redis = RedisServer(work / "redis", persist=True).start()
    token = secrets.token_hex(16)
    fleet = Fleet(redis=redis, replicas=[], token=token)
    try:
        for name in ("r1", "r2"):
            port = free_port()
            env = replica_env(
                redis_url=redis.url, replica=name, port=port, model_dir=work / name / "models",
                token=token, bootstrap=archives[VERSIONS[0]] if name == "r1" else None,
            )  # fmt: skip
            fleet.replicas.append(
                Server.start(
                    server_command(APP, port),
                    env=env,
                    port=port,
                    cpu=cpu,
                    log=work / name / "server.log",
                )
            )
        # swap-b last: as in an operator's upload-then-activate, the swap phase's first
        # activation (of swap-b, through r1) finds it loaded by the upload's validation.
        for version in reversed(MEMORY_VERSIONS[1:]):
            r = httpx.post(
                fleet.urls[0] + "/admin/bundles",
                content=archives[version].read_bytes(),
                headers={**fleet.headers, "Content-Type": "application/gzip"},
                timeout=300,
            )
            if r.status_code != 201:
                raise RuntimeError(f"uploading {version} answered {r.status_code}: {r.text}")
        if fleet.wait_serving(VERSIONS[0], 30) is None:
            raise RuntimeError(f"the fleet does not serve {VERSIONS[0]}")
        if fleet.wait_prepared(VERSIONS[1], 120) is None:
            raise RuntimeError(f"the fleet did not load the upload of {VERSIONS[1]} ahead")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def retag(src: Path, dst: Path, version: str) -> Path:
    """A copy of bundle `src` whose manifest names `version` (the files, and so their sha256,
    are unchanged)."""
    shutil.copytree(src, dst)
    manifest_path = dst / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["model_version"] = version
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dst


# --- load in the background ------------------------------------------------------------------
@dataclass
class LoadRun:
    fleet: Fleet
    workload: Path
    offered_rps: float
    duration_s: float
    user_rps: float
    cpu: str | None
    prefix: Path
    result: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def trace_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + "_trace.csv")

    def run(self) -> None:
        try:
            self.result = run_locust(
                self.fleet.urls[0], offered_rps=self.offered_rps, duration_s=self.duration_s,
                workload=self.workload, path="/recommend", csv_prefix=self.prefix,
                user_rps=self.user_rps, cpu=self.cpu,
                extra_env={"LOCUST_HOSTS": ",".join(self.fleet.urls),
                           "LOCUST_TRACE": str(self.trace_path)},
            )  # fmt: skip
        except BaseException as e:
            self.error = e

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"locust-{self.prefix.name}")
        thread.start()
        return thread

    def join(self, thread: threading.Thread) -> list[Answer]:
        thread.join()
        if self.error is not None:
            raise self.error
        return read_trace(self.trace_path)


def during_load(run: LoadRun, action: Callable[[float], Any]) -> tuple[list[Answer], Any]:
    """Start `run`, call `action(t0)` (t0: unix time locust was started), return both."""
    t0 = time.time()
    thread = run.start()
    try:
        out = action(t0)
    finally:
        answers = run.join(thread)
    return answers, out


# --- phases ----------------------------------------------------------------------------------
def swap_phase(fleet: Fleet, n_swaps: int, duration_s: float, t0: float) -> list[dict[str, Any]]:
    """`n_swaps` activations spread over the middle of the run, alternating version and
    replica; each waits for the whole fleet to serve the new version."""
    start_at, spacing = 5.0, (duration_s - 10.0) / max(n_swaps, 1)
    swaps = []
    for i in range(n_swaps):
        time.sleep(max(0.0, t0 + start_at + i * spacing - time.time()))
        version, replica = VERSIONS[(i + 1) % 2], i % 2
        # Warm: every replica holds the version loaded already (service.registry: the standby,
        # or prepared: uploaded or announced).
        warm = all(
            version in (st["standby"], st["prepared"])
            for st in (fleet.status(r) for r in range(len(fleet.replicas)))
        )
        t_call = time.time()
        status, body = fleet.activate(replica, version)
        t_answer = time.time()
        fleet_s = fleet.wait_serving(version) if status == 200 else None
        swaps.append({
            "i": i, "version": version, "via": f"r{replica + 1}", "warm": warm, "status": status,
            "body": body if status != 200 else "", "start": t_call,
            "activate_s": round(t_answer - t_call, 3),
            "fleet_s": None if fleet_s is None else round(t_answer - t_call + fleet_s, 3),
        })  # fmt: skip
        _log(f"swap {i + 1}/{n_swaps} to {version} ({'warm' if warm else 'cold'}) "
             f"via r{replica + 1}: {status}, "
             f"{t_answer - t_call:.2f} s, whole fleet {swaps[-1]['fleet_s']} s")  # fmt: skip
    return swaps


def memory_phase(fleet: Fleet, cycles: int) -> list[dict[str, Any]]:
    """`cycles` × 2 activations through r1, rotating swap-b, swap-c, swap-a, ... (each one a
    load from disk on every replica); both replicas' RSS and the slowest activation (call
    to whole fleet serving, s) after each cycle."""
    curve = [{"cycle": 0, "rss_mb": [r.rss_mb() for r in fleet.replicas], "fleet_s": None}]
    rotation = itertools.cycle(MEMORY_VERSIONS[1:] + MEMORY_VERSIONS[:1])
    for c in range(1, cycles + 1):
        slowest = 0.0
        for version in (next(rotation), next(rotation)):
            t_call = time.monotonic()
            status, body = fleet.activate(0, version)
            if status != 200 or fleet.wait_serving(version) is None:
                raise RuntimeError(f"cycle {c}: activating {version} gave {status}: {body}")
            slowest = max(slowest, time.monotonic() - t_call)
        curve.append(
            {"cycle": c, "rss_mb": [r.rss_mb() for r in fleet.replicas], "fleet_s": slowest}
        )
        if c % 10 == 0:
            _log(f"memory: cycle {c}/{cycles}, RSS {curve[-1]['rss_mb']} MiB")
    return curve


def outage_phase(fleet: Fleet, t0: float, at_s: float, outage_s: float) -> dict[str, Any]:
    """Stop Redis at `at_s` for `outage_s`; poll /readyz on every replica meanwhile; then time
    how long until every replica is ready and listening again."""
    time.sleep(max(0.0, t0 + at_s - time.time()))
    fleet.redis.stop()
    stopped = time.time()
    seen: list[set[str]] = [set() for _ in fleet.replicas]
    while time.time() < stopped + outage_s:
        for i in range(len(fleet.replicas)):
            seen[i].add(fleet.readyz(i))
        time.sleep(0.5)
    fleet.redis.start()
    restarted = time.time()
    recovered = None
    while time.time() < restarted + 30:
        ok = all(
            fleet.readyz(i) == "ready" and fleet.status(i).get("subscriber_connected")
            for i in range(len(fleet.replicas))
        )
        if ok:
            recovered = round(time.time() - restarted, 2)
            break
        time.sleep(0.1)
    return {
        "stopped_at_s": round(stopped - t0, 2),
        "down_s": round(restarted - stopped, 2),
        "readyz_during_outage": [sorted(s) for s in seen],
        "recovered_s": recovered,
    }


# --- results ---------------------------------------------------------------------------------
def _target(value: Any, threshold: Any, op: str, what: str) -> dict[str, Any]:
    if value is None:
        passed = False
    elif op == "<=":
        passed = value <= threshold
    elif op == ">=":
        passed = value >= threshold
    else:  # "=="
        passed = value == threshold
    return {"value": value, "threshold": threshold, "op": op, "passed": passed, "what": what}


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    s, m, o = results["swap_under_load"], results["memory"], results["redis_outage"]
    f, b = results["fuzz"], results["malicious_bundles"]
    ratio = (
        s["p99_during_swaps_ms"] / s["p99_steady_ms"]
        if s["p99_during_swaps_ms"] is not None and s["p99_steady_ms"]
        else None
    )
    growth = (
        m["rss_mb_after_100"] / m["rss_mb_after_5"] - 1.0
        if m["rss_mb_after_100"] and m["rss_mb_after_5"]
        else None
    )
    t = {
        "swap_failed": _target(s["failed"], 0, "==", "failed requests during the swap run"),
        "swap_p99_ratio": _target(
            None if ratio is None else round(ratio, 3),
            TARGET_P99_RATIO,
            "<=",
            "p99 during swaps / steady p99",
        ),
        "versions": _target(
            set(s["versions_seen"]) <= set(VERSIONS),
            True,
            "==",
            "every answer named one of the two versions",
        ),
        "swaps_ok": _target(
            s["swaps_ok"], s["swaps"], "==", "activations answered 200 and reached both replicas"
        ),
        "fleet_propagation_s": _target(
            s["fleet_propagation_max_s"],
            TARGET_PROPAGATION_S,
            "<=",
            "slowest activation call → whole fleet serving it",
        ),
        "rss_growth": _target(
            None if growth is None else round(growth, 4),
            TARGET_RSS_GROWTH,
            "<=",
            f"RSS after {m['cycles']} swap cycles / after 5, minus 1 (worse replica)",
        ),
        "outage_failed": _target(o["failed"], 0, "==", "failed requests with Redis stopped"),
        "fuzz_server_errors": _target(f["server_errors"], 0, "==", "5xx answers to the fuzzer"),
        "fuzz_schema_violations": _target(
            f["schema_violations"], 0, "==", "answers not matching the OpenAPI schema"
        ),
        "malicious_rejected": _target(
            b["rejected"], b["tried"], "==", "malicious bundles answered 4xx"
        ),
        "malicious_reason_named": _target(
            b["reason_matched"], b["tried"], "==", "4xx answers naming the expected reason"
        ),
        "serving_unchanged": _target(
            b["serving_version_changed"], False, "==", "serving version changed by the corpus"
        ),
    }
    return {"all_passed": all(v["passed"] for v in t.values()), **t}


def swap_summary(
    answers: list[Answer], swaps: list[dict[str, Any]], steady: dict[str, Any]
) -> dict[str, Any]:
    windows = [
        (s["start"], s["start"] + (s["fleet_s"] or FLEET_WAIT_S) + AFTER_SWAP_S) for s in swaps
    ]
    during = [a.ms for a in answers if in_windows(a.start, windows)]
    whole = summarize(answers)
    props = [s["fleet_s"] for s in swaps if s["fleet_s"] is not None]
    return {
        "requests": whole["requests"],
        "failed": whole["failed"],
        "swaps": len(swaps),
        "swaps_ok": sum(1 for s in swaps if s["status"] == 200 and s["fleet_s"] is not None),
        "p99_steady_ms": steady["p99_ms"],
        "p99_during_swaps_ms": percentile(during, 99),
        "requests_during_swaps": len(during),
        "p99_whole_run_ms": whole["p99_ms"],
        "p50_whole_run_ms": whole["p50_ms"],
        "max_ms": whole["max_ms"],
        "versions_seen": whole["versions_seen"],
        "answers_per_version": {
            v: sum(1 for a in answers if a.version == v) for v in whole["versions_seen"]
        },
        "statuses": whole["statuses"],
        "activate_s_max": max((s["activate_s"] for s in swaps), default=None),
        "fleet_propagation_max_s": max(props) if len(props) == len(swaps) and props else None,
        # Cold: a version some replica had to load (the first swap to each version); warm:
        # every replica held it as its standby (the previous active version).
        "cold_swaps": sum(1 for s in swaps if not s["warm"]),
        "fleet_propagation_cold_max_s": max(
            (s["fleet_s"] for s in swaps if not s["warm"] and s["fleet_s"] is not None),
            default=None,
        ),
        "fleet_propagation_warm_max_s": max(
            (s["fleet_s"] for s in swaps if s["warm"] and s["fleet_s"] is not None), default=None
        ),
        "swap_log": swaps,
    }


def memory_summary(curve: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(curve) - 1
    at5 = curve[min(5, n)]["rss_mb"]
    last = curve[n]["rss_mb"]
    growth = [b / a - 1 if a and b else math.inf for a, b in zip(at5, last, strict=True)]
    worst = max(range(len(growth)), key=lambda i: growth[i])
    return {
        "cycles": n,
        "cycle": "activate swap-b, then swap-a, through r1; r2 follows",
        "replica": f"r{worst + 1} (the one that grew more)",
        "rss_mb_after_5": at5[worst],
        "rss_mb_after_100": last[worst],
        "rss_mb_per_replica_after_5": at5,
        "rss_mb_per_replica_after_last": last,
        # every memory-cycle activation loads from disk on both replicas (no load running)
        "fleet_propagation_cold_max_s": round(
            max((c["fleet_s"] for c in curve if c.get("fleet_s") is not None), default=0.0), 3
        )
        or None,
        "curve": curve,
    }


# --- report ----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(r: dict[str, Any]) -> str:
    s, m, o = r["swap_under_load"], r["memory"], r["redis_outage"]
    f, b, c = r["fuzz"], r["malicious_bundles"], r["capacity"]
    out = [
        "# Swap benchmark: hot swaps, faults and hostile input",
        "",
        f"Command: `{r['command']}`  ",
        f"Commit `{r['git_commit']}`"
        + (" (uncommitted changes)" if r["git_dirty"] else "")
        + f"; CPU {r['cpu']}; wall time {r['wall_seconds']:.0f} s  ",
        f"Bundle: {r['bundle']['source']} ({r['bundle']['items']} items), served as "
        f"`{VERSIONS[0]}` and `{VERSIONS[1]}` (and `{MEMORY_VERSIONS[2]}` in the memory cycles, "
        "so that each of their activations loads from disk). Two replicas pinned to core 0 "
        "sharing one Redis; locust on core 1, round-robin over the replicas. Swaps are warm "
        "when every replica held the version loaded (uploaded and announced: `prepared`; or "
        "the previous one: `standby`), cold otherwise (every memory-cycle activation).",
        "",
        f"Capacity probe: {c['achieved_rps']:.0f} rps achieved at {c['offered_rps']:.0f} offered"
        + (" (locust's core was the limit)" if c.get("locust_limited") else "")
        + f"; load for the runs below: {r['load_rps']:.0f} rps ({r['load_fraction']:.0%}).",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| swap run: requests / failed | {s['requests']:,} / {s['failed']} |",
        f"| swaps (ok / tried) | {s['swaps_ok']} / {s['swaps']} |",
        f"| steady p99 (no swaps) | {s['p99_steady_ms']} ms |",
        f"| p99 during swaps ({s['requests_during_swaps']:,} requests) | "
        f"{s['p99_during_swaps_ms']} ms |",
        f"| p99 whole swap run | {s['p99_whole_run_ms']} ms |",
        f"| versions seen | {', '.join(s['versions_seen'])} |",
        f"| slowest activation call / whole fleet | {s['activate_s_max']} s / "
        f"{s['fleet_propagation_max_s']} s |",
        f"| whole fleet, slowest cold swap ({s['cold_swaps']}) / warm swap "
        f"({s['swaps'] - s['cold_swaps']}) | {s['fleet_propagation_cold_max_s']} s / "
        f"{s['fleet_propagation_warm_max_s']} s |",
        f"| whole fleet, slowest cold activation of the memory cycles (no load) | "
        f"{m.get('fleet_propagation_cold_max_s')} s |",
        f"| RSS after 5 / {m['cycles']} swap cycles ({m['replica']}) | "
        f"{m['rss_mb_after_5']} / {m['rss_mb_after_100']} MiB |",
        f"| Redis outage run: requests / failed | {o['requests']:,} / {o['failed']} |",
        f"| Redis down / replicas ready again after restart | {o['down_s']} s / "
        f"{o['recovered_s']} s |",
        f"| /readyz while Redis was down | "
        f"{'; '.join(', '.join(x) for x in o['readyz_during_outage'])} |",
        f"| fuzz: cases / 5xx / schema violations | {f['cases']:,} / {f['server_errors']} / "
        f"{f['schema_violations']} |",
        f"| malicious bundles: tried / rejected 4xx / reason named | {b['tried']} / "
        f"{b['rejected']} / {b['reason_matched']} |",
        f"| serving version changed by the corpus | {b['serving_version_changed']} |",
        "",
        "## Targets",
        "",
    ]
    rows = []
    for key, v in r["targets"].items():
        if key == "all_passed":
            continue
        rows.append([key, v["what"], str(v["value"]), f"{v['op']} {v['threshold']}",
                     "PASS" if v["passed"] else "**FAIL**"])  # fmt: skip
    out += _table(["target", "measured as", "value", "required", "result"], rows)
    out += ["", f"All targets: {'PASS' if r['targets']['all_passed'] else 'FAIL'}.", ""]
    return "\n".join(out)


def render_plot(r: dict[str, Any], trace: list[Answer], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax_lat, ax_mem = fig.subplots(1, 2)
    s = r["swap_under_load"]
    t0 = min(a.start for a in trace)
    ax_lat.scatter([a.start - t0 for a in trace], [a.ms for a in trace], s=1, alpha=0.3,
                   color="tab:blue", label="request latency")  # fmt: skip
    for i, sw in enumerate(s["swap_log"]):
        ax_lat.axvline(sw["start"] - t0, color="tab:red", alpha=0.4, linewidth=0.8,
                       label="activation" if i == 0 else None)  # fmt: skip
    ax_lat.axhline(s["p99_steady_ms"], color="gray", linestyle="--",
                   label=f"steady p99 {s['p99_steady_ms']} ms")  # fmt: skip
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("seconds into the swap run")
    ax_lat.set_ylabel("latency (ms, log)")
    ax_lat.set_title(f"{s['swaps']} swaps under {r['load_rps']:.0f} rps, 2 replicas")
    ax_lat.legend(fontsize=8, loc="upper right")
    curve = r["memory"]["curve"]
    for i in range(len(curve[0]["rss_mb"])):
        ax_mem.plot([c["cycle"] for c in curve], [c["rss_mb"][i] for c in curve],
                    marker=".", label=f"replica r{i + 1}")  # fmt: skip
    ax_mem.set_xlabel("swap cycles (swap-b, then swap-a)")
    ax_mem.set_ylabel("resident size (MiB)")
    ax_mem.set_title("memory across swaps")
    ax_mem.grid(True, alpha=0.3)
    ax_mem.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


# --- command line ----------------------------------------------------------------------------
def add_fleet_arguments(p: argparse.ArgumentParser, *, bundle_help: str) -> None:
    """The flags of a benchmark on a two-replica fleet under load (this one and
    `benchmarks.catalog_live`): data, bundle, outputs, the capacity probe, the load, pinning."""
    a = p.add_argument
    a("--data", type=Path, default=Path("../shared/data/amazon-beauty.txt"))
    a("--bundle", type=Path, default=None, help=bundle_help)
    a("--out", type=Path, default=Path("benchmarks/results"))
    a("--work", type=Path, default=Path("benchmarks/work"))
    a("--load", type=float, default=0.7, help="share of the probed capacity (default 0.7)")
    a("--probe-rps", type=float, default=4000.0, help="offered rate of the capacity probe")
    a("--probe", type=float, default=15.0, help="seconds of the capacity probe")
    a("--user-rps", type=float, default=10.0)
    a("--server-cpu", default="0")
    a("--load-cpu", default="1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.swap", description=__doc__.split("\n")[0]
    )
    add_fleet_arguments(p, bundle_help="bundle dir to serve (default: as bench-serve)")
    a = p.add_argument
    a("--steady", type=float, default=30.0, help="seconds of the steady run")
    a("--duration", type=float, default=60.0, help="seconds of the swap run")
    a("--swaps", type=int, default=20)
    a("--cycles", type=int, default=100, help="swap cycles of the memory phase")
    a("--outage-run", type=float, default=40.0, help="seconds of the Redis outage run")
    a("--outage", type=float, default=10.0, help="seconds Redis stays down")
    a("--fuzz-examples", type=int, default=25, help="fuzzer examples per operation and mode")
    a("--no-plot", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    from benchmarks.fuzz import run_fuzz
    from benchmarks.hostile import run_malicious_corpus
    from benchmarks.serve import resolve_inputs
    from benchmarks.workload import WorkloadConfig, build_workload, histories_from_data, read_vocab
    from bundle import pack_bundle

    work: Path = args.work / "swap"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, shipped, provenance = resolve_inputs(args.data, args.bundle, args.work)
    archives = {}
    for v in MEMORY_VERSIONS:
        d = retag(shipped, work / "bundles" / v, v)
        archives[v] = work / "bundles" / f"{v}.tar.gz"
        pack_bundle(d, archives[v])
    vocab = read_vocab(shipped / "vocab.json")
    histories = histories_from_data(data, vocab=vocab) if data is not None else None
    workload = build_workload(vocab, histories, WorkloadConfig(), source=str(data))
    workload_path = workload.save(work / "workload.json")
    _log(f"bundle {shipped} ({len(vocab)} items); starting Redis and two replicas")
    fleet = start_fleet(work, archives, cpu=args.server_cpu)

    def load(name: str, rps: float, seconds: float) -> LoadRun:
        return LoadRun(fleet, workload_path, rps, seconds, args.user_rps, args.load_cpu,
                       work / "locust" / name)  # fmt: skip

    try:
        probe = load("capacity", args.probe_rps, args.probe)
        answers, _ = during_load(probe, lambda t0: None)
        capacity = {
            "offered_rps": args.probe_rps, "achieved_rps": probe.result["rps"],
            "p99_ms": probe.result["p99_ms"], "locust_limited": probe.result["locust_limited"],
            "failed": sum(1 for a in answers if a.status != 200),
        }  # fmt: skip
        rps = round(args.load * float(probe.result["rps"]), 1)
        _log(f"capacity {probe.result['rps']} rps; load {rps} rps")

        steady_answers, _ = during_load(load("steady", rps, args.steady), lambda t0: None)
        steady = summarize(steady_answers, skip_s=2.0)
        _log(f"steady: p99 {steady['p99_ms']} ms, failed {steady['failed']}")

        swap_run = load("swaps", rps, args.duration)
        swap_answers, swaps = during_load(
            swap_run, lambda t0: swap_phase(fleet, args.swaps, args.duration, t0)
        )
        swap_result = swap_summary(swap_answers, swaps, steady)
        _log(f"swaps: failed {swap_result['failed']}, p99 during swaps "
             f"{swap_result['p99_during_swaps_ms']} ms (steady {steady['p99_ms']})")  # fmt: skip

        curve = memory_phase(fleet, args.cycles)
        memory = memory_summary(curve)

        at_s = (args.outage_run - args.outage) / 2
        outage_answers, outage_info = during_load(
            load("outage", rps, args.outage_run),
            lambda t0: outage_phase(fleet, t0, at_s, args.outage),
        )
        outage = {**summarize(outage_answers), **outage_info}
        _log(f"Redis outage: failed {outage['failed']} of {outage['requests']}")

        corpus = run_malicious_corpus(fleet.urls[0], fleet.token, gates=("accuracy", "latency"))
        _log(f"malicious bundles: {corpus['rejected']}/{corpus['tried']} rejected")
        fuzz = run_fuzz(fleet.urls[0], args.fuzz_examples, token=fleet.token)
        _log(f"fuzz: {fuzz['cases']} cases, {fuzz['server_errors']} 5xx")
    finally:
        fleet.stop()

    dirty = git("status", "--porcelain")
    results: dict[str, Any] = {
        "command": shlex.join([python_exe(), "-m", "benchmarks.swap", *argv]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "bundle": {
            "source": provenance.get("bundle_source"),
            "dir": str(shipped),
            "items": len(vocab),
            "versions": list(VERSIONS),
            "memory_phase_versions": list(MEMORY_VERSIONS),
        },
        "pinning": {"replicas": args.server_cpu, "locust": args.load_cpu},
        "gates": GATE_ENV,
        "capacity": capacity,
        "load_fraction": args.load,
        "load_rps": rps,
        "steady": steady,
        "swap_under_load": swap_result,
        "memory": memory,
        "redis_outage": outage,
        "fuzz": {
            k: fuzz[k]
            for k in (
                "cases",
                "server_errors",
                "schema_violations",
                "operations",
                "statuses",
                "failures",
            )
        },
        "malicious_bundles": corpus,
    }
    results["targets"] = evaluate_targets(results)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = render_markdown(results)
    (out / "swap.md").write_text(markdown, encoding="utf-8")
    if not args.no_plot:
        render_plot(results, swap_answers, out / "swap.png")
    print(markdown)
    _log(
        f"wrote {out / 'swap.json'}; targets {'PASS' if results['targets']['all_passed'] else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
