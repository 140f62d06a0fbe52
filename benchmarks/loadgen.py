"""Processes of the serving benchmark: a pinned server, locust load levels, wrk.

    with Server.start(cmd, env=env, cpu="0", log=path) as server:   # waits for /readyz
        level = run_locust(server.url, offered_rps=500, duration_s=20, cpu="1", ...)
        level["p99_ms"], server.rss_mb()

The server runs pinned to one core and locust to the other (`taskset -c`), so the numbers
are those of one core serving while another loads it. Every level records how busy each
side was (CPU seconds of the process / wall seconds), which is how a level limited by the
load generator rather than the server is told apart (`locust_limited`).
"""

from __future__ import annotations

import csv
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "benchmarks" / "locustfile.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A level is "limited by the load generator" when locust's core was this busy (or locust
# warned that it was); "short of offered" when it achieved less than this share of the rate.
BUSY = 0.9
SHORT = 0.9


class ServerError(RuntimeError):
    """A benchmark server did not start, or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_set(cpus: str) -> set[int]:
    """A taskset core list ("0", "0-3", "0,2") as a set."""
    out: set[int] = set()
    for part in cpus.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def can_pin(cpu: str | None) -> bool:
    """taskset is there and every core of `cpu` is one this process may run on."""
    if cpu is None or shutil.which("taskset") is None:
        return False
    try:
        return cpu_set(cpu) <= os.sched_getaffinity(0)
    except ValueError:
        return False


def pinned(cmd: Sequence[str], cpu: str | None) -> list[str]:
    """`cmd` under `taskset -c cpu`; unpinned where that is not possible (see `can_pin`)."""
    return ["taskset", "-c", cpu, *cmd] if can_pin(cpu) and cpu is not None else list(cmd)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pinned(cmd, cpu), env=dict(env), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        server = cls(proc, port, log)
        try:
            server.wait_ready(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

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

    def rss_mb(self) -> float | None:
        """Resident set size of the server process (VmRSS in /proc/<pid>/status), MiB."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

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


def post(url: str, body: bytes, *, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


# --- locust ----------------------------------------------------------------------------------
def _num(raw: str | None) -> float | None:
    if raw is None or raw in ("", "N/A"):
        return None
    return float(raw)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def parse_locust_stats(path: Path) -> dict[str, Any]:
    """The Aggregated row of locust's `<prefix>_stats.csv`, plus the per-name rows."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_name = {r["Name"]: r for r in rows}
    agg = by_name.get("Aggregated")
    if agg is None:
        raise ValueError(f"{path} has no Aggregated row")

    def summary(r: dict[str, str]) -> dict[str, Any]:
        n = int(r["Request Count"])
        failed = int(r["Failure Count"])
        return {
            "requests": n,
            "failed_requests": failed,
            "failures": failed / n if n else 1.0,
            "rps": _round(_num(r["Requests/s"]), 2),
            "p50_ms": _num(r.get("50%")),
            "p90_ms": _num(r.get("90%")),
            "p99_ms": _num(r.get("99%")),
            "max_ms": _round(_num(r.get("Max Response Time")), 3),
            "mean_ms": _round(_num(r.get("Average Response Time")), 3),
        }

    out = summary(agg)
    out["by_name"] = {name: summary(r) for name, r in by_name.items() if name != "Aggregated"}
    return out


def users_for(offered_rps: float, user_rps: float) -> tuple[int, float]:
    """(users, per-user rate) whose product is exactly `offered_rps`."""
    users = max(1, round(offered_rps / user_rps))
    return users, offered_rps / users


def run_locust(
    url: str,
    *,
    offered_rps: float,
    duration_s: float,
    workload: Path,
    path: str,
    csv_prefix: Path,
    user_rps: float,
    cpu: str | None,
    server: Server | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One load level: headless locust at `offered_rps` for `duration_s`; the parsed result.
    `extra_env` adds locustfile settings (LOCUST_HOSTS, LOCUST_TRACE)."""
    users, per_user = users_for(offered_rps, user_rps)
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    locust = Path(sys.executable).with_name("locust")
    cmd = pinned(
        [
            str(locust if locust.exists() else "locust"), "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", str(users), "-t", f"{duration_s:g}s",
            "--csv", str(csv_prefix), "--only-summary", "--host", url,
            "--exit-code-on-error", "0", "--stop-timeout", "2",
        ],
        cpu,
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LOCUST_WORKLOAD": str(workload),
        "LOCUST_PATH": path,
        "LOCUST_USER_RPS": repr(per_user),
    }
    for name in ("LOCUST_DATA", "LOCUST_VOCAB", "LOCUST_HOSTS", "LOCUST_TRACE"):
        env.pop(name, None)
    env.update(extra_env or {})
    server_cpu0 = server.cpu_s() if server else 0.0
    child_cpu0 = children_cpu_s()
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=duration_s + 120)  # fmt: skip
    wall = time.monotonic() - t0
    locust_cpu = children_cpu_s() - child_cpu0
    server_cpu = (server.cpu_s() - server_cpu0) if server else None
    stats = csv_prefix.with_name(csv_prefix.name + "_stats.csv")
    if not stats.is_file():
        raise RuntimeError(
            f"locust wrote no {stats.name} (exit {r.returncode}):\n{r.stderr[-3000:]}"
        )
    level: dict[str, Any] = {"offered_rps": round(offered_rps, 1), **parse_locust_stats(stats)}
    output = r.stdout + r.stderr
    level["users"] = users
    level["user_rps"] = round(per_user, 4)
    level["locust_cpu_warning"] = "CPU usage above" in output or "CPU usage was too high" in output
    # Busy fractions over the whole locust run, start-up included.
    level["locust_cpu"] = round(locust_cpu / wall, 3)
    level["server_cpu"] = None if server_cpu is None else round(server_cpu / wall, 3)
    # Short of the offered rate: users fell behind (answers slower than 1 / user_rps), which
    # is the server saturating unless locust's own core was the one that was full.
    level["short_of_offered"] = (level["rps"] or 0.0) < SHORT * offered_rps
    level["locust_limited"] = bool(level["locust_cpu_warning"] or level["locust_cpu"] >= BUSY)
    return level


# --- wrk -------------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(raw: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", raw.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {raw!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/sec, latency percentiles and errors from `wrk --latency` output."""
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    for pct in (50, 75, 90, 99):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", text, re.MULTILINE)
        out[f"p{pct}_ms"] = round(_ms(m.group(1)), 3) if m else None
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", text)
    out["socket_errors"] = m.group(1).strip() if m else None
    return out


def wrk_script(body: bytes) -> str:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("body cannot be quoted for lua")
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{text}]==]\n"
    )


def run_wrk(
    url: str,
    *,
    body: bytes,
    duration_s: float,
    connections: int,
    cpu: str | None,
    script_path: Path,
) -> dict[str, Any] | None:
    """Closed-loop wrk (1 thread, `connections` connections) POSTing one fixed body.

    None when wrk is not installed (`apt-get install wrk`)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(wrk_script(body), encoding="utf-8")
    cmd = pinned(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
         "-s", str(script_path), url],
        cpu,
    )  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    if r.returncode != 0:
        return {"error": f"wrk exited {r.returncode}: {r.stderr[-500:]}"}
    return {
        **parse_wrk(r.stdout),
        "connections": connections,
        "threads": 1,
        "duration_s": max(1, round(duration_s)),
        "body_bytes": len(body),
    }
