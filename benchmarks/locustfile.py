"""Locust load for the serving benchmark: a storefront's mix of /recommend calls.

    # what `benchmarks.serve` runs for each load level (server pinned to core 0):
    LOCUST_WORKLOAD=workload.json LOCUST_USER_RPS=10 taskset -c 1 \\
        .venv/bin/locust -f benchmarks/locustfile.py --headless -u 100 -r 100 -t 20s \\
        --csv out/level --only-summary --host http://127.0.0.1:8000
    # by hand, histories from a data file, IDs from the served bundle's vocabulary:
    LOCUST_DATA=../shared/data/amazon-beauty.txt LOCUST_VOCAB=var/demo/demo/vocab.json \\
        .venv/bin/locust -f benchmarks/locustfile.py --headless -u 50 -r 50 -t 30s \\
        --host http://localhost:8000

About 70% of requests are full-catalog recommendations (`{"history": [...], "k": 10}`), 30%
rerank 50-200 search candidates (`{"history": [...], "k": 10, "candidates": [...]}`); see
`benchmarks/workload.py`. Offered load is open-ended per user: each user starts its requests
as a Poisson process of rate LOCUST_USER_RPS (exponential gaps, first one at a random phase),
so users × LOCUST_USER_RPS is the offered rate and all users together are a Poisson process,
as independent shoppers are. (locust's `constant_throughput` with users spawned together
sends them in synchronized bursts, every user once per period: a queue that real traffic
does not make.) A user whose answer comes back after its next start time sends the next
request at once, without catching up on the ones it missed, so a slower server gets less.
Any answer other than 200 is a failure.

Environment:

    LOCUST_WORKLOAD   request bodies made by benchmarks.serve (fastest to start), or else:
    LOCUST_DATA       interactions file: each user's most recent (up to 50) items are histories
    LOCUST_VOCAB      the served bundle's vocab.json: candidates, synthetic histories, filter
    LOCUST_PATH       route to POST to (default /recommend; the ceiling uses /bench/constant)
    LOCUST_USER_RPS   requests per second per user (default 10)
    LOCUST_RERANK_SHARE  share of rerank requests (default 0.3)
    LOCUST_SEED       workload seed (default 0)
    LOCUST_HOSTS      comma-separated base URLs: requests go round-robin over them (a fleet
                      without a load balancer; `benchmarks.swap`), instead of --host
    LOCUST_TRACE      write one line per request to this file when the run ends:
                      start (unix s), milliseconds, HTTP status, answering model_version, host
    LOCUST_TRACE_ITEMS  with LOCUST_TRACE and set to 1: a sixth field, the answer's item IDs
                      as a JSON array (`benchmarks.catalog_live` counts unavailable items)
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import orjson
from locust import FastHttpUser, events, task

# Locust puts this file's directory on sys.path; the workload module is imported as part of
# the `benchmarks` package, from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.workload import (
    Workload,
    WorkloadConfig,
    build_workload,
    histories_from_data,
    read_vocab,
)

PATH = os.environ.get("LOCUST_PATH", "/recommend")
USER_RPS = float(os.environ.get("LOCUST_USER_RPS", "10"))
RERANK_SHARE = float(os.environ.get("LOCUST_RERANK_SHARE", "0.3"))
HEADERS = {"Content-Type": "application/json"}
HOSTS = [h.rstrip("/") for h in os.environ.get("LOCUST_HOSTS", "").split(",") if h.strip()]
TRACE_PATH = os.environ.get("LOCUST_TRACE")
TRACE_ITEMS = os.environ.get("LOCUST_TRACE_ITEMS") == "1"
TRACE: list[tuple[float, float, int, str, int]] = []
TRACE_ANSWER_ITEMS: list[bytes] = []  # with TRACE_ITEMS: JSON array of item IDs, per TRACE line
_next_host = itertools.cycle(range(len(HOSTS))) if HOSTS else None


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_trace(**_: Any) -> None:
    if TRACE_PATH:
        with open(TRACE_PATH, "w", encoding="utf-8") as f:
            if TRACE_ITEMS:
                f.writelines(
                    f"{t:.6f},{ms:.3f},{st},{v},{h},{items.decode()}\n"
                    for (t, ms, st, v, h), items in zip(TRACE, TRACE_ANSWER_ITEMS, strict=True)
                )
            else:
                f.writelines(f"{t:.6f},{ms:.3f},{st},{v},{h}\n" for t, ms, st, v, h in TRACE)


def _load_workload() -> Workload:
    if os.environ.get("LOCUST_WORKLOAD"):
        return Workload.load(Path(os.environ["LOCUST_WORKLOAD"]))
    vocab_path = os.environ.get("LOCUST_VOCAB")
    data_path = os.environ.get("LOCUST_DATA")
    vocab = read_vocab(Path(vocab_path)) if vocab_path else None
    histories = None
    if data_path and Path(data_path).is_file():
        histories = histories_from_data(Path(data_path), vocab=vocab)
    if vocab is None:
        if histories is None:
            raise RuntimeError("set LOCUST_WORKLOAD, or LOCUST_VOCAB (and optionally LOCUST_DATA)")
        vocab = sorted({i for h in histories for i in h})
    config = WorkloadConfig(seed=int(os.environ.get("LOCUST_SEED", "0")))
    return build_workload(vocab, histories, config, source=data_path or "")


WORKLOAD = _load_workload()


class Shopper(FastHttpUser):
    """One shopper's page views, paced at USER_RPS requests per second."""

    def on_start(self) -> None:
        self.rng = random.Random()
        gevent.sleep(self.rng.uniform(0.0, 1.0 / USER_RPS))  # a random phase
        self.next_start = time.monotonic()

    def wait_time(self) -> float:
        """Until this user's next Poisson arrival (never to catch up on missed ones)."""
        now = time.monotonic()
        self.next_start = max(self.next_start + self.rng.expovariate(USER_RPS), now)
        return self.next_start - now

    def _post(self, body: bytes, name: str) -> None:
        host = next(_next_host) if _next_host is not None else 0
        url = HOSTS[host] + PATH if HOSTS else PATH
        started = time.time()
        with self.client.post(
            url,
            data=body,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=HEADERS,
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                # status 0: no HTTP answer at all; the client's error says why.
                error = f": {resp.error!r}"[:200] if getattr(resp, "error", None) else ""
                resp.failure(f"HTTP {resp.status_code}{error}")
            if TRACE_PATH:
                version, items = "", b"[]"
                if resp.status_code == 200:
                    try:
                        answer = orjson.loads(resp.content)
                        version = str(answer.get("model_version", ""))
                        if TRACE_ITEMS:
                            items = orjson.dumps([str(i["item_id"]) for i in answer["items"]])
                    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                        version, items = "?", b'["?"]'
                ms = float(resp.request_meta["response_time"])  # locust's own measurement
                TRACE.append((started, ms, int(resp.status_code or 0), version, host))
                if TRACE_ITEMS:
                    TRACE_ANSWER_ITEMS.append(items)

    @task
    def page(self) -> None:
        if self.rng.random() < RERANK_SHARE:
            self._post(self.rng.choice(WORKLOAD.rerank), "rerank")
        else:
            self._post(self.rng.choice(WORKLOAD.full), "full-catalog")
