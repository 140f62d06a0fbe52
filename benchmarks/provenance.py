"""Where a benchmark result came from: the git commit, the CPU, the Python that ran it."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def python_exe() -> str:
    """The interpreter, relative to the working directory when inside it (`.venv/bin/python`)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)
