"""One caller on one keep-alive connection, each request sent when the previous answer was
read: the latency a storefront's page view sees from a quiet, warm server.

    bodies = sequential_bodies(workload, 2000)
    run_sequential(server.url, "/recommend", bodies, warmup=50, cpu="1")["server_p50_ms"]

The server's own time is its `Server-Timing: app;dur=...` header; the client's, the round
trip. Percentiles interpolate linearly (numpy).
"""

from __future__ import annotations

import gc
import http.client
import random
import time
from collections.abc import Sequence
from typing import NotRequired, TypedDict, cast

import numpy as np

from benchmarks.harness.pinning import pinned_thread
from benchmarks.workload import Workload

SEQUENTIAL_N = 2000
SEQUENTIAL_WARMUP = 50  # unrecorded requests on the same connection first
RERANK_SHARE = 0.3  # the locustfile's mix (LOCUST_RERANK_SHARE's default)
CLIENT = (
    "http.client.HTTPConnection: one keep-alive connection, TCP_NODELAY, next request sent "
    "when the previous answer was read; gc paused"
)
SERVER_TIME = (
    "Server-Timing app;dur (service.logs.RequestContextMiddleware: from its entry to the "
    "response start; uvicorn's HTTP parsing and the socket are not in it), 0.01 ms resolution"
)
CLIENT_TIME = "perf_counter around request() .. read(): the whole round trip"
HEADERS = {"Content-Type": "application/json"}


class TimingStats(TypedDict):
    """Percentiles of the server's own time and of the round trip, over `n` requests."""

    n: int
    server_p50_ms: float | None
    server_p90_ms: float | None
    server_p99_ms: float | None
    client_p50_ms: float | None
    client_p90_ms: float | None
    client_p99_ms: float | None
    client_mean_ms: float | None
    server_timing_missing: int  # answers without a Server-Timing header


class SequentialSummary(TimingStats):
    requests: int
    failures: int
    statuses: dict[str, int]  # the answers other than 200, by status
    by_kind: NotRequired[dict[str, TimingStats]]


class Sequential(SequentialSummary):
    """`run_sequential`'s record: the summary and how it was measured."""

    achieved_rps: float | None
    reconnects: int
    warmup_requests: int
    client: str
    client_cpu: str | None
    client_pinned: bool
    mix: dict[str, float]
    server_time: str
    client_time: str


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


def _timing_stats(
    idx: Sequence[int], server_ms: Sequence[float | None], client_ms: Sequence[float]
) -> TimingStats:
    """p50/p90/p99 of the server's time and of the round trip over requests `idx`."""
    server = [float(t) for i in idx if (t := server_ms[i]) is not None]
    client = [float(client_ms[i]) for i in idx]
    return {
        "n": len(idx),
        "server_p50_ms": _pct(server, 50),
        "server_p90_ms": _pct(server, 90),
        "server_p99_ms": _pct(server, 99),
        "client_p50_ms": _pct(client, 50),
        "client_p90_ms": _pct(client, 90),
        "client_p99_ms": _pct(client, 99),
        "client_mean_ms": round(sum(client) / len(client), 3) if client else None,
        "server_timing_missing": len(idx) - len(server),
    }


def sequential_summary(
    server_ms: Sequence[float | None],
    client_ms: Sequence[float],
    *,
    statuses: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
) -> SequentialSummary:
    """p50/p90/p99 of the server's own time and of the round trip, over the answered (200)
    requests, overall and per kind; failures are counted, never timed."""
    n = len(client_ms)
    statuses = list(statuses) if statuses is not None else [200] * n
    if len(server_ms) != n or len(statuses) != n or (kinds is not None and len(kinds) != n):
        raise ValueError("one server time, client time, status (and kind) per request")
    ok = [i for i in range(n) if statuses[i] == 200]
    # cast: a TypedDict literal cannot spread a record next to an optional key (mypy)
    out = cast(
        SequentialSummary,
        {
            "requests": n,
            **_timing_stats(ok, server_ms, client_ms),
            "failures": n - len(ok),
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses)) if s != 200},
        },
    )
    if kinds is not None:
        out["by_kind"] = {
            kind: _timing_stats([i for i in ok if kinds[i] == kind], server_ms, client_ms)
            for kind in sorted(set(kinds))
        }
    return out


class _Caller:
    """POSTs on one keep-alive connection (`http.client`: less client overhead than httpx),
    reconnecting after an error."""

    def __init__(self, url: str, path: str, timeout_s: float) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)  # TCP_NODELAY
        self.path = path
        self.reconnects = 0

    def call(self, body: bytes) -> tuple[int, str | None]:
        """(status, Server-Timing header); status 0 when no answer came."""
        try:
            self.conn.request("POST", self.path, body=body, headers=HEADERS)
            resp = self.conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("server-timing")
        except (http.client.HTTPException, OSError):
            self.conn.close()  # http.client reconnects on the next request
            self.reconnects += 1
            return 0, None


def run_sequential(
    url: str,
    path: str,
    bodies: Sequence[tuple[str, bytes]],
    *,
    warmup: int,
    cpu: str | None,
    timeout_s: float = 30.0,
) -> Sequential:
    """`bodies` one after the other from one caller, after `warmup` unrecorded ones; the
    calling thread pinned to `cpu` and the garbage collector paused while it runs (this
    process holds the workload and histories: no collection mid-run)."""
    caller = _Caller(url, path, timeout_s)
    server_ms: list[float | None] = []
    client_ms: list[float] = []
    statuses: list[int] = []
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with pinned_thread(cpu) as was_pinned:
            for i in range(warmup):
                caller.call(bodies[i % len(bodies)][1])
            t_start = time.perf_counter()
            for _, body in bodies:
                t0 = time.perf_counter()
                status, timing = caller.call(body)
                client_ms.append((time.perf_counter() - t0) * 1000)
                server_ms.append(server_timing_ms(timing))
                statuses.append(status)
            wall_s = time.perf_counter() - t_start
    finally:
        caller.conn.close()
        if gc_was:
            gc.enable()
    kinds = [k for k, _ in bodies]
    return {
        **sequential_summary(server_ms, client_ms, statuses=statuses, kinds=kinds),
        "achieved_rps": round(len(bodies) / wall_s, 1) if wall_s > 0 else None,
        "reconnects": caller.reconnects,
        "warmup_requests": warmup,
        "client": CLIENT,
        "client_cpu": cpu,
        "client_pinned": was_pinned,
        "mix": {"full_catalog": round(1 - RERANK_SHARE, 2), "rerank": RERANK_SHARE},
        "server_time": SERVER_TIME,
        "client_time": CLIENT_TIME,
    }
