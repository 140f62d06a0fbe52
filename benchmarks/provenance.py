"""Where a benchmark result came from: the git commit, the CPU, the Python that ran it.

Machines of one kind can report the same CPU model and still differ a lot: on this project's
2-core "AMD EPYC" machines the serving ceiling measured 3,134-3,427 requests/s on one host and
917-964 on another (with an L3 of 32 and of 8 MiB). `host_info` records what tells such hosts
apart: clock, cache sizes, and a timed pure-Python probe on the core under test, at the start
and at the end of a run (it also shows the host slowing down or speeding up during one).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


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
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return round(float(r.stdout.strip()), 1)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def host_info(probe_prefix: Sequence[str] = ()) -> dict[str, Any]:
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
