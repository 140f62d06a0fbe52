"""A benchmark's server: a uvicorn process pinned to its cores, waited for until /readyz
answers 200, measured (CPU seconds, resident memory) and stopped with its whole group.

    with Server.uvicorn("service.main:create_app", env=service_env({...}), cpu="0",
                        log=work / "server.log") as server:
        post(server.url + "/recommend", body), server.rss_mb(), server.cpu_s()

A server's figures are those of its process tree, so a `--workers N` server (a supervisor
and N workers) is counted whole; for one process they are that process's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from benchmarks.harness.pinning import pinned
from benchmarks.provenance import REPO
from testkit.service_env import without_service_settings

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The naive baseline's settings (benchmarks/apps.py): set by the benchmark, never inherited.
BENCHMARK_SETTINGS = frozenset(["NAIVE_BUNDLE", "NAIVE_CHECKPOINT"])


class ServerError(RuntimeError):
    """A benchmark server did not start, or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def uvicorn_command(app: str, port: int, workers: int = 1) -> list[str]:
    """uvicorn, 1 worker (or `workers`), uvloop, httptools, no access log, warnings only."""
    flags = f"--host 127.0.0.1 --port {port} --loop uvloop --http httptools --no-access-log"
    flags += " --log-level warning" + (f" --workers {workers}" if workers > 1 else "")
    return [sys.executable, "-m", "uvicorn", "--factory", app, *flags.split()]


def service_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the service's settings, plus what every benchmark
    server runs with (local host, warnings only, one OpenMP thread) and `settings`."""
    env = without_service_settings(BENCHMARK_SETTINGS)
    env.update(
        {
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            **settings,
        }
    )
    return env


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


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


def status_mb(pid: int, key: str) -> float | None:
    """A `/proc/<pid>/status` memory line (VmRSS, VmHWM) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _sum_mb(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 1) if known else None


class Server:
    """A server process in its own session (so its whole group can be killed)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(
        cls,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str],
        port: int,
        cpu: str | None,
        log: Path,
        ready_timeout_s: float = 300.0,
    ) -> Server:
        """Start `cmd` (pinned to `cpu`), output to `log`; return once /readyz is 200."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pinned(cmd, cpu),
                env=dict(env),
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(proc, port, log)
        try:
            server.wait_ready(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def uvicorn(
        cls,
        app: str,
        *,
        env: Mapping[str, str],
        cpu: str | None,
        log: Path,
        workers: int = 1,
        ready_timeout_s: float = 300.0,
    ) -> Server:
        """`uvicorn_command(app)` on a free port (also given as PORT in its environment)."""
        port = free_port()
        return cls.start(
            uvicorn_command(app, port, workers),
            env={**env, "PORT": str(port)},
            port=port,
            cpu=cpu,
            log=log,
            ready_timeout_s=ready_timeout_s,
        )

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"server exited with {self.proc.returncode} before /readyz answered 200; "
                    f"log {self.log}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServerError(f"/readyz not 200 within {timeout_s:.0f} s; log {self.log}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cpu_s(self) -> float:
        return sum(process_cpu_s(p) for p in process_tree(self.pid))

    def rss_mb(self) -> float | None:
        """Resident set size (VmRSS), MiB, summed over the process tree."""
        return _sum_mb(status_mb(p, "VmRSS") for p in process_tree(self.pid))

    def peak_rss_mb(self) -> float | None:
        """Sum of each process's VmHWM (an upper bound of the tree's peak)."""
        return _sum_mb(status_mb(p, "VmHWM") for p in process_tree(self.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


BATCH_SIZE_METRIC = "recsys_batch_size"  # service.metrics: one observation per model call


def batch_counters(metrics_text: str) -> tuple[float, float] | None:
    """(sum, count) of the batch-size histogram in a Prometheus exposition; None when the
    text has none (an app that is not the service)."""
    values = {}
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name in (f"{BATCH_SIZE_METRIC}_sum", f"{BATCH_SIZE_METRIC}_count"):
            values[name] = float(value)
    if len(values) != 2:
        return None
    return values[f"{BATCH_SIZE_METRIC}_sum"], values[f"{BATCH_SIZE_METRIC}_count"]


def read_batch_counters(url: str, *, timeout: float = 10.0) -> tuple[float, float] | None:
    """`batch_counters` of the server's GET /metrics; None when it has no such metric."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout) as r:
            return batch_counters(r.read().decode())
    except urllib.error.URLError:
        return None


def post(url: str, body: bytes, *, timeout: float = 30.0) -> tuple[int, bytes]:
    """POST a JSON body; (status, answer body), HTTP errors included."""
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
