"""Prometheus metrics, one `CollectorRegistry` per app (several apps can live in one test
process), and the ASGI middleware that times every request by route template, method,
status and answering model version.

Names follow the Prometheus conventions: base units (seconds), `_total` on counters (added
by prometheus_client), `_info` for the version gauge. Labels stay bounded: route templates,
never raw paths; model versions are the few installed ones. README "Observability" lists them.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CONTENT_TYPE_LATEST",
    "NO_MODEL_VERSION",
    "Metrics",
    "MetricsMiddleware",
    "model_version_label",
    "route_label",
    "set_model_version",
]

# The model_version label of requests no model answered (admin, health, errors, /metrics).
NO_MODEL_VERSION = "none"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._add_http_metrics()
        self._add_request_path_metrics()
        self._add_model_metrics()
        self._add_fleet_metrics()

    def _add_http_metrics(self) -> None:
        self.requests = Counter(
            "recsys_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_http_request_duration_seconds",
            "HTTP request latency in seconds, by route template, method, status code and the "
            "model version that answered ('none' where no model did).",
            ["route", "method", "status", "model_version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _add_request_path_metrics(self) -> None:
        self.inference = Histogram(
            "recsys_inference_duration_seconds",
            "Encoder (onnxruntime) time per batch, seconds.",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "recsys_queue_duration_seconds",
            "Time a request waited for its inference batch (submit to batch start), seconds.",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "recsys_batch_size",
            "Requests per encoder batch (one recommend_batch call of the micro-batcher).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.answer_cache = Counter(
            "recsys_answer_cache_requests",
            "Answer cache lookups by result: hit, miss, or error (Redis unavailable).",
            ["result"],
            registry=self.registry,
        )
        self.recommendations = Counter(
            "recsys_recommendations",
            "Recommendations computed by a model (answer cache hits excluded), by strategy.",
            ["strategy"],
            registry=self.registry,
        )

    def _add_model_metrics(self) -> None:
        self.model_info = Gauge(
            "recsys_model_info",
            "The serving model version (value 1 on the active version's series).",
            ["version"],
            registry=self.registry,
        )
        self.canary_info = Gauge(
            "recsys_canary_percent",
            "The canary version and the share of traffic (percent) it serves; absent without one.",
            ["version"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "recsys_model_swaps",
            "Model activations that replaced a serving model.",
            registry=self.registry,
        )
        self.last_swap = Gauge(
            "recsys_last_swap_duration_seconds",
            "Duration of the last activation, from its start (load, validate, warm up) to the "
            "switch, seconds.",
            registry=self.registry,
        )

    def _add_fleet_metrics(self) -> None:
        self.worker = Gauge(
            "recsys_worker_info",
            "The process these metrics come from (1): its replica name and process id. With "
            "WORKERS > 1 each worker keeps its own metrics; a scrape reads one of them.",
            ["replica", "pid"],
            registry=self.registry,
        )
        self.fleet_heals = Counter(
            "recsys_fleet_heals",
            "Times this replica wrote the fleet state back into a store that had lost it.",
            registry=self.registry,
        )
        self.catalog_revision = Gauge(
            "recsys_catalog_revision",
            "The live catalog revision this replica serves under (service.catalog).",
            registry=self.registry,
        )

    def on_activate(self, previous: str | None, version: str, duration_s: float) -> None:
        if previous is not None:
            self.model_info.remove(previous)
            self.swaps.inc()
        self.model_info.labels(version=version).set(1)
        self.last_swap.set(duration_s)

    def on_canary(self, version: str | None, percent: float) -> None:
        self.canary_info.clear()
        if version is not None:
            self.canary_info.labels(version=version).set(percent)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def set_model_version(request: Request, version: str) -> None:
    """Name the model version that answered this request (latency histogram, access log)."""
    request.state.model_version = version


def model_version_label(scope: Scope) -> str:
    state = scope.get("state")
    version = state.get("model_version") if isinstance(state, dict) else None
    return version if isinstance(version, str) else NO_MODEL_VERSION


def route_label(scope: Scope) -> str:
    """The matched route's path template, or "unmatched": never the raw path."""
    route: Any = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Counts and times HTTP requests; the route label is the matched path template
    (`/admin/bundles/{version}/activate`), so label cardinality stays bounded, and the
    latency's model_version label is what the route named with `set_model_version`."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (route_label(scope), scope.get("method", ""), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels, model_version_label(scope)).observe(
                time.perf_counter() - start
            )
