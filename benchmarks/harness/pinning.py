"""Pinning to cores with taskset core lists ("0", "0-3", "0,2"): the server on one core,
the load generator on another, so a level measures one core serving while another loads it.

    pinned(["locust", ...], "1")      # ["taskset", "-c", "1", "locust", ...] where allowed
    with pinned_thread("1"): ...      # the calling thread alone, then its affinity restored
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence


def cpu_set(cpus: str) -> set[int]:
    """A taskset core list as a set."""
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


def shared_cores(a: str | None, b: str | None) -> str:
    """The cores two core lists have in common, as a core list ("" for none)."""
    try:
        common = cpu_set(a) & cpu_set(b) if a and b else set()
    except ValueError:
        return ""
    return ",".join(map(str, sorted(common)))


@contextlib.contextmanager
def pinned_thread(cpu: str | None) -> Iterator[bool]:
    """Run the calling thread on `cpu` inside the block, then restore its affinity; yields
    whether it was pinned (not where those cores are not ours)."""
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
