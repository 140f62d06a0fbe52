"""Service replicas sharing one private Redis, under background locust load: the fleet of
`benchmarks.swap` and `benchmarks.catalog_live`.

    inputs = prepare_inputs(args, work, versions=("swap-a", "swap-b"))
    fleet = Fleet.start(work, prefix="swapbench", gates={...}, persist=True)
    fleet.start_replica(work, "r1", cpu="0", bootstrap=inputs.archives["swap-a"])
    run = LoadRun(fleet, inputs.workload_path, 500.0, 30.0, 10.0, "1", work / "locust" / "x")
    swaps = during_load(run, lambda t0: ...)   # the action runs while locust does
    answers = run.answers()

Locust sends each request round-robin to the replicas (`LOCUST_HOSTS`) and records every
answer's start, latency, status, model version and replica (`LOCUST_TRACE`).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from benchmarks.harness.load import Level, run_locust
from benchmarks.harness.servers import Server, service_env
from benchmarks.harness.trace import Answer, read_trace
from benchmarks.workload import Workload
from testkit.redis_server import RedisServer

APP = "service.main:create_app"
FLEET_WAIT_S = 5.0  # how long a swap may take to reach every replica before it counts as lost
JSON_HEADERS = {"Content-Type": "application/json"}
T = TypeVar("T")


def replica_env(
    *,
    redis_url: str,
    prefix: str,
    replica: str,
    model_dir: Path,
    token: str,
    bootstrap: Path | None,
    gates: Mapping[str, str],
) -> dict[str, str]:
    """A replica's settings: the fleet's Redis and key prefix, its name and model directory,
    the admin token, the validation gates, and a bootstrap bundle when it has one."""
    env = service_env(
        {
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "REPLICA_ID": replica,
            "ADMIN_TOKEN": token,
            "MODEL_DIR": str(model_dir),
            **gates,
        }
    )
    if bootstrap is not None:
        env["BOOTSTRAP_BUNDLE"] = str(bootstrap)
    return env


@dataclass
class Fleet:
    redis: RedisServer
    prefix: str  # REDIS_KEY_PREFIX of every replica
    gates: Mapping[str, str]  # GATE_* settings of every replica
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    replicas: list[Server] = field(default_factory=list)

    @classmethod
    def start(
        cls, work: Path, *, prefix: str, gates: Mapping[str, str], persist: bool = False
    ) -> Fleet:
        """A fleet of no replica yet on a private redis-server under `work`/redis (`persist`:
        saving to disk, so a restart keeps its data)."""
        (work / "redis").mkdir(parents=True)
        return cls(RedisServer(work / "redis", persist=persist).start(), prefix, gates)

    def start_replica(
        self,
        work: Path,
        name: str,
        *,
        cpu: str | None,
        bootstrap: Path | None,
        ready_timeout_s: float = 300.0,
    ) -> Server:
        """Replica `name` (model directory and log under `work`/name), once /readyz is 200."""
        env = replica_env(
            redis_url=self.redis.url,
            prefix=self.prefix,
            replica=name,
            model_dir=work / name / "models",
            token=self.token,
            bootstrap=bootstrap,
            gates=self.gates,
        )
        server = Server.uvicorn(
            APP, env=env, cpu=cpu, log=work / name / "server.log", ready_timeout_s=ready_timeout_s
        )
        self.replicas.append(server)
        return server

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

    def upload(self, i: int, archive: Path) -> None:
        """POST a bundle archive through replica i's admin API; it must answer 201."""
        r = httpx.post(
            self.urls[i] + "/admin/bundles",
            content=archive.read_bytes(),
            headers={**self.headers, "Content-Type": "application/gzip"},
            timeout=300,
        )
        if r.status_code != 201:
            raise RuntimeError(f"uploading {archive.name} answered {r.status_code}: {r.text}")

    def admin(
        self, i: int, method: str, path: str, body: Any = None, *, timeout: float = 60
    ) -> tuple[int, Any, float]:
        """(status, JSON answer or text, seconds of the request) of an admin call to replica
        i; status 0 with the error's text when no answer came."""
        content = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        with httpx.Client(timeout=timeout) as client:
            t0 = time.perf_counter()
            try:
                r = client.request(
                    method,
                    self.urls[i] + path,
                    headers={**self.headers, **JSON_HEADERS},
                    content=content,
                )
            except httpx.HTTPError as e:
                return 0, f"{type(e).__name__}: {e}", time.perf_counter() - t0
            secs = time.perf_counter() - t0
        try:
            answer: Any = r.json()
        except ValueError:
            answer = r.text[:300]
        return r.status_code, answer, secs

    def wait_serving(self, version: str, timeout_s: float = FLEET_WAIT_S) -> float | None:
        """Seconds until every replica serves `version`; None if one did not in time."""
        return self._wait_status("serving", version, timeout_s, poll_s=0.02)

    def wait_prepared(self, version: str, timeout_s: float) -> float | None:
        """Seconds until every replica holds `version` loaded ahead (`prepared` in
        /admin/status: the uploading replica at once, the others when it announced it)."""
        return self._wait_status("prepared", version, timeout_s, poll_s=0.05)

    def _wait_status(
        self, key: str, version: str, timeout_s: float, *, poll_s: float
    ) -> float | None:
        """Seconds until /admin/status says `key` is `version` on every replica; None if a
        replica did not get there in time."""
        t0 = time.monotonic()
        pending = set(range(len(self.replicas)))
        while pending and time.monotonic() - t0 < timeout_s:
            pending = {i for i in pending if self.status(i)[key] != version}
            if pending:
                time.sleep(poll_s)
        return None if pending else time.monotonic() - t0

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        self.redis.stop()


# --- the bundle and the workload -------------------------------------------------------------
def retag(src: Path, dst: Path, version: str) -> Path:
    """A copy of bundle `src` whose manifest names `version` (the files, and so their sha256,
    are unchanged)."""
    shutil.copytree(src, dst)
    manifest_path = dst / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["model_version"] = version
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dst


@dataclass
class FleetInputs:
    """What a fleet benchmark serves and sends: the bundle under each version name (a
    directory and its archive), its vocabulary, and the locust workload."""

    shipped: Path
    source: str | None  # how the bundle was found or made (`resolve_inputs`)
    bundles: dict[str, Path]
    archives: dict[str, Path]
    vocab: list[str]
    workload: Workload
    workload_path: Path


def prepare_inputs(args: argparse.Namespace, work: Path, versions: tuple[str, ...]) -> FleetInputs:
    """The bundle `benchmarks.serve` would serve (`--data`, `--bundle`, `--work`), copied and
    packed under each of `versions`, and a workload of the data's histories."""
    from benchmarks.serve_bundles import resolve_inputs
    from benchmarks.workload import WorkloadConfig, build_workload, histories_from_data, read_vocab
    from bundle import pack_bundle

    data, shipped, provenance = resolve_inputs(args.data, args.bundle, args.work)
    bundles, archives = {}, {}
    for v in versions:
        bundles[v] = retag(shipped, work / "bundles" / v, v)
        archives[v] = work / "bundles" / f"{v}.tar.gz"
        pack_bundle(bundles[v], archives[v])
    vocab = read_vocab(shipped / "vocab.json")
    histories = histories_from_data(data, vocab=vocab) if data is not None else None
    workload = build_workload(vocab, histories, WorkloadConfig(), source=str(data))
    return FleetInputs(
        shipped=shipped,
        source=provenance.get("bundle_source"),
        bundles=bundles,
        archives=archives,
        vocab=vocab,
        workload=workload,
        workload_path=workload.save(work / "workload.json"),
    )


# --- load in the background ------------------------------------------------------------------
@dataclass
class LoadRun:
    """One traced locust run over the whole fleet, in a thread of its own."""

    fleet: Fleet
    workload: Path
    offered_rps: float
    duration_s: float
    user_rps: float
    cpu: str | None
    prefix: Path  # locust's CSV prefix; the trace is `<prefix>_trace.csv`
    trace_items: bool = False  # the trace also lists each answer's item IDs
    result: Level | None = None
    error: BaseException | None = None

    @property
    def trace_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + "_trace.csv")

    @property
    def level(self) -> Level:
        """Locust's figures for the run, once it ended."""
        if self.result is None:
            raise RuntimeError(f"load run {self.prefix.name} has no result: {self.error!r}")
        return self.result

    def run(self) -> None:
        extra = {"LOCUST_HOSTS": ",".join(self.fleet.urls), "LOCUST_TRACE": str(self.trace_path)}
        if self.trace_items:
            extra["LOCUST_TRACE_ITEMS"] = "1"
        try:
            self.result = run_locust(
                self.fleet.urls[0],
                offered_rps=self.offered_rps,
                duration_s=self.duration_s,
                workload=self.workload,
                path="/recommend",
                csv_prefix=self.prefix,
                user_rps=self.user_rps,
                cpu=self.cpu,
                extra_env=extra,
            )
        except BaseException as e:
            self.error = e

    def answers(self) -> list[Answer]:
        return read_trace(self.trace_path)


def during_load(run: LoadRun, action: Callable[[float], T]) -> T:
    """Start `run`, call `action(t0)` (t0: unix time locust was started) while it runs, wait
    for the run to end; what `action` returned. A failed run raises its error."""
    t0 = time.time()
    thread = threading.Thread(target=run.run, name=f"locust-{run.prefix.name}")
    thread.start()
    try:
        out = action(t0)
    finally:
        thread.join()
    if run.error is not None:
        raise run.error
    return out


def idle(t0: float) -> None:
    """The action of a load run that only measures (`during_load(run, idle)`)."""


class FleetPhases:
    """A benchmark's phases on one fleet: a capacity probe first, then load runs at `rps`,
    the `--load` share of what the probe achieved (the flags of `add_fleet_arguments`)."""

    def __init__(
        self, args: argparse.Namespace, work: Path, inputs: FleetInputs, fleet: Fleet
    ) -> None:
        self.args, self.work, self.inputs, self.fleet = args, work, inputs, fleet
        self.rps = 0.0

    def load(self, name: str, rps: float, seconds: float, *, trace_items: bool = False) -> LoadRun:
        """A load run named `name` (its CSVs and trace under `work`/locust)."""
        a, prefix = self.args, self.work / "locust" / name
        workload = self.inputs.workload_path
        return LoadRun(
            self.fleet, workload, rps, seconds, a.user_rps, a.load_cpu, prefix, trace_items
        )

    def probe_capacity(self) -> LoadRun:
        """A saturating run at `--probe-rps` for `--probe` seconds; sets `rps`."""
        probe = self.load("capacity", self.args.probe_rps, self.args.probe)
        during_load(probe, idle)
        self.rps = round(self.args.load * float(probe.level["rps"] or 0.0), 1)
        return probe


# --- command line ----------------------------------------------------------------------------
def add_fleet_arguments(p: argparse.ArgumentParser, *, bundle_help: str) -> None:
    """The flags of a benchmark on a two-replica fleet under load: data, bundle, outputs,
    the capacity probe, the load, pinning."""
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
