"""Where a benchmark result came from: the command, the git commit, the CPU, the Python
that ran it, and how fast the host was while it ran.

    results = {**run_provenance("benchmarks.serve", argv), "host": host_info(prefix), ...}

Machines that report the same CPU model can still differ a lot in speed; `host_info`
records what tells such hosts apart: clock, cache sizes, and a timed pure-Python probe on the
core under test, at the start and at the end of a run (it also shows the host slowing down
or speeding up during one).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypedDict

REPO = Path(__file__).resolve().parent.parent


class ProbeMs(TypedDict):
    start: float | None
    end: float | None


class HostInfo(TypedDict):
    cpu_mhz: float | None
    caches: dict[str, str]
    python_probe: str  # what the probe times
    python_probe_ms: ProbeMs


class GitState(TypedDict):
    git_commit: str | None
    git_dirty: bool | None


class RunProvenance(GitState):
    command: str
    cpu: str
    cpu_count: int | None


def git(*args: str) -> str | None:
    """`git <args>` in the repository, stripped; None when git is missing or fails."""
    try:
        r = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=30, check=True, cwd=REPO
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip()


def _cpuinfo(field: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first core's `field` in /proc/cpuinfo, None where it is missing or unreadable."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_mhz(cpuinfo: Path = Path("/proc/cpuinfo")) -> float | None:
    """The first core's clock as the kernel reports it (a nominal figure in most VMs)."""
    try:
        return round(float(_cpuinfo("cpu MHz", cpuinfo) or ""), 1)
    except ValueError:
        return None


def cpu_caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, str]:
    """The first core's caches as sysfs lists them: {"L1d": "32K", "L1i": "64K", "L2": "512K",
    "L3": "8192K"}; {} where sysfs has none."""
    out: dict[str, str] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text(encoding="utf-8").strip()
            kind = (index / "type").read_text(encoding="utf-8").strip()
            size = (index / "size").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[f"L{level}{suffix}"] = size
    return out


PROBE_N = 3_000_000
PROBE_REPEATS = 5


def python_probe_ms(prefix: Sequence[str] = (), *, n: int = PROBE_N) -> float | None:
    """Median of `PROBE_REPEATS` timings of `sum(range(n))` in a fresh interpreter started
    under `prefix` (e.g. `taskset -c 0`), in ms: the host's single-core Python speed at that
    moment. None when the probe cannot run."""
    code = (
        "import time\n"
        "t = []\n"
        f"for _ in range({PROBE_REPEATS}):\n"
        "    a = time.perf_counter()\n"
        f"    sum(range({n}))\n"
        "    t.append(time.perf_counter() - a)\n"
        "print(sorted(t)[len(t) // 2] * 1e3)\n"
    )
    try:
        r = subprocess.run(
            [*prefix, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return round(float(r.stdout.strip()), 1)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def host_info(probe_prefix: Sequence[str] = ()) -> HostInfo:
    """Clock, caches, and the Python probe now (a run adds its end with `python_probe_ms`)."""
    return {
        "cpu_mhz": cpu_mhz(),
        "caches": cpu_caches(),
        "python_probe": f"median of {PROBE_REPEATS} timings of sum(range({PROBE_N:,})), a fresh "
        "interpreter on the server core; lower is faster",
        "python_probe_ms": {"start": python_probe_ms(probe_prefix), "end": None},
    }


def python_exe() -> str:
    """The interpreter, relative to the working directory when inside it (`.venv/bin/python`)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def git_state() -> GitState:
    """The commit checked out and whether the working tree differs from it (None: no git).
    Taken at the start of a long run: the code that runs is the code of that moment."""
    dirty = git("status", "--porcelain")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
    }


def command_line(module: str, argv: Sequence[str]) -> str:
    """How to run it again: `.venv/bin/python -m <module> <argv>`."""
    return shlex.join([python_exe(), "-m", module, *argv])


def run_provenance(module: str, argv: Sequence[str]) -> RunProvenance:
    """The command, the commit (see `git_state`), the CPU model and its core count."""
    git_commit = git_state()
    return {
        "command": command_line(module, argv),
        "git_commit": git_commit["git_commit"],
        "git_dirty": git_commit["git_dirty"],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def package_version(package: str) -> str | None:
    """The installed version of `package`, None when it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None
