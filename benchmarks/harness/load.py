"""Load against a server: headless locust at one offered rate, and closed-loop wrk.

    level = run_locust(server.url, offered_rps=500, duration_s=20, workload=path,
                       path="/recommend", csv_prefix=work / "level-500", user_rps=10.0,
                       cpu="1", server=server)
    level["p99_ms"], level["locust_limited"]

Every level records how busy each side was (CPU seconds of the process / wall seconds),
which is how a level limited by the load generator rather than the server is told apart
(`locust_limited`).
"""

from __future__ import annotations

import csv
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from benchmarks.harness.pinning import pinned
from benchmarks.harness.servers import Server
from benchmarks.provenance import REPO

LOCUSTFILE = REPO / "benchmarks" / "locustfile.py"
# A level is "limited by the load generator" when locust's core was this busy (or locust
# warned that it was); "short of offered" when it achieved less than this share of the rate.
BUSY = 0.9
SHORT = 0.9
# Settings of the locustfile a level sets itself, never inherited from the caller's shell.
LOCUST_SETTINGS = ("LOCUST_DATA", "LOCUST_VOCAB", "LOCUST_HOSTS", "LOCUST_TRACE")


class LocustRow(TypedDict):
    """One row of locust's `<prefix>_stats.csv` (latencies in ms)."""

    requests: int
    failed_requests: int
    failures: float  # failed share, 1.0 for no requests
    rps: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None


class LocustStats(LocustRow):
    by_name: dict[str, LocustRow]  # per request name (full catalog, rerank)


class Level(LocustStats):
    """One load level: locust's Aggregated row, the offered rate and who was busy."""

    offered_rps: float
    users: int
    user_rps: float
    locust_cpu_warning: bool
    locust_cpu: float  # CPU seconds of locust / wall seconds of the level
    server_cpu: float | None  # the same for the server, when there was one
    short_of_offered: bool
    locust_limited: bool
    # Requests per model call over the level (the service's batch-size histogram, set by the
    # caller); None: not measured (an app without it, or several workers counting apart).
    batch_mean: float | None


# --- locust ----------------------------------------------------------------------------------
def _num(raw: str | None) -> float | None:
    if raw is None or raw in ("", "N/A"):
        return None
    return float(raw)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _locust_row(r: Mapping[str, str]) -> LocustRow:
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


def parse_locust_stats(path: Path) -> LocustStats:
    """The Aggregated row of locust's `<prefix>_stats.csv`, plus the per-name rows."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_name = {r["Name"]: r for r in rows}
    agg = by_name.get("Aggregated")
    if agg is None:
        raise ValueError(f"{path} has no Aggregated row")
    others = {name: _locust_row(r) for name, r in by_name.items() if name != "Aggregated"}
    return {**_locust_row(agg), "by_name": others}


def users_for(offered_rps: float, user_rps: float) -> tuple[int, float]:
    """(users, per-user rate) whose product is exactly `offered_rps`."""
    users = max(1, round(offered_rps / user_rps))
    return users, offered_rps / users


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def locust_command(url: str, *, users: int, duration_s: float, csv_prefix: Path) -> list[str]:
    """Headless locust on the benchmark's locustfile, one process, summary only."""
    locust = Path(sys.executable).with_name("locust")
    return [
        str(locust if locust.exists() else "locust"),
        *("-f", str(LOCUSTFILE), "--headless", "--only-summary", "--host", url),
        *("-u", str(users), "-r", str(users), "-t", f"{duration_s:g}s"),
        *("--csv", str(csv_prefix), "--exit-code-on-error", "0", "--stop-timeout", "2"),
    ]


def locust_env(
    workload: Path, path: str, per_user_rps: float, extra: Mapping[str, str] | None
) -> dict[str, str]:
    """The locustfile's settings: the workload, the path, each user's rate, and `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LOCUST_SETTINGS}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "LOCUST_WORKLOAD": str(workload),
            "LOCUST_PATH": path,
            "LOCUST_USER_RPS": repr(per_user_rps),
            **(extra or {}),
        }
    )
    return env


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
) -> Level:
    """One load level: headless locust at `offered_rps` for `duration_s`; the parsed result.
    `extra_env` adds locustfile settings (LOCUST_HOSTS, LOCUST_TRACE)."""
    users, per_user = users_for(offered_rps, user_rps)
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = locust_command(url, users=users, duration_s=duration_s, csv_prefix=csv_prefix)
    env = locust_env(workload, path, per_user, extra_env)
    server_cpu0 = server.cpu_s() if server else 0.0
    child_cpu0 = children_cpu_s()
    t0 = time.monotonic()
    r = subprocess.run(
        pinned(cmd, cpu),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
    )
    wall = time.monotonic() - t0
    locust_cpu = children_cpu_s() - child_cpu0
    server_cpu = (server.cpu_s() - server_cpu0) if server else None
    stats = csv_prefix.with_name(csv_prefix.name + "_stats.csv")
    if not stats.is_file():
        raise RuntimeError(
            f"locust wrote no {stats.name} (exit {r.returncode}):\n{r.stderr[-3000:]}"
        )
    output = r.stdout + r.stderr
    warned = "CPU usage above" in output or "CPU usage was too high" in output
    locust_share = round(locust_cpu / wall, 3)
    parsed = parse_locust_stats(stats)
    # Busy fractions over the whole locust run, start-up included. Short of the offered
    # rate: users fell behind (answers slower than 1 / user_rps), which is the server
    # saturating unless locust's own core was the one that was full.
    return {
        "offered_rps": round(offered_rps, 1),
        **parsed,
        "users": users,
        "user_rps": round(per_user, 4),
        "locust_cpu_warning": warned,
        "locust_cpu": locust_share,
        "server_cpu": None if server_cpu is None else round(server_cpu / wall, 3),
        "short_of_offered": (parsed["rps"] or 0.0) < SHORT * offered_rps,
        "locust_limited": warned or locust_share >= BUSY,
        "batch_mean": None,
    }


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
) -> dict[str, Any]:
    """Closed-loop wrk (1 thread, `connections` connections) POSTing one fixed body; an
    `error` entry when wrk is not installed (`apt-get install wrk`) or failed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(wrk_script(body), encoding="utf-8")
    seconds = max(1, round(duration_s))
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script_path)]
    r = subprocess.run(
        pinned([*cmd, url], cpu), capture_output=True, text=True, timeout=duration_s + 60
    )
    if r.returncode != 0:
        return {"error": f"wrk exited {r.returncode}: {r.stderr[-500:]}"}
    return {
        **parse_wrk(r.stdout),
        "connections": connections,
        "threads": 1,
        "duration_s": seconds,
        "body_bytes": len(body),
    }
