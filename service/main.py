"""Composes the app: settings, lifespan, middleware, routers. Nothing heavy at import.

python -m service                                 # HOST/PORT/MODEL_DIR/... from the env
uvicorn --factory service.main:create_app         # the same app under uvicorn's CLI
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from service.answer_cache import AnswerCache
from service.batcher import ArrivalMiddleware, MicroBatcher
from service.deps import AdminDep, RequestPath
from service.exception_handlers import install_exception_handlers
from service.fleet import new_replica_id, open_fleet
from service.gates import GateConfig
from service.limits import BodySizeLimitMiddleware
from service.logs import RequestContextMiddleware, configure_logging
from service.metrics import Metrics, MetricsMiddleware
from service.model import ModelOptions
from service.registry import Registry
from service.responses import OrjsonResponse
from service.routes import admin, catalog, demo, docs, health, recommend
from service.routes import metrics as metrics_routes
from service.settings import Settings, get_settings
from service.store import open_store


def open_registry(settings: Settings, metrics: Metrics) -> Registry:
    """The registry over the store and fleet the settings name (Redis, or embedded)."""
    redis_url = str(settings.redis_url) if settings.redis_url else None
    store = open_store(
        redis_url=redis_url,
        state_dir=settings.model_dir,
        prefix=settings.redis_key_prefix,
        timeout_s=settings.redis_timeout_s,
    )
    fleet = open_fleet(
        redis_url=redis_url,
        prefix=settings.redis_key_prefix,
        replica_id=replica_name(settings),
        timeout_s=settings.redis_timeout_s,
        lock_wait_s=settings.fleet_lock_wait_s,
        lock_ttl_s=settings.fleet_lock_ttl_s,
        poll_s=settings.fleet_poll_s,
        local_lock=settings.model_dir / ADMIN_LOCK_FILE if settings.workers > 1 else None,
    )
    return Registry(
        model_dir=settings.model_dir,
        store=store,
        fleet=fleet,
        options=ModelOptions.from_settings(settings),
        max_unpacked_bytes=settings.max_unpacked_bytes,
        on_activate=metrics.on_activate,
        on_canary=metrics.on_canary,
        on_heal=metrics.fleet_heals.inc,
        gates=GateConfig(
            metric=settings.gate_metric,
            max_metric_drop=settings.gate_max_ndcg_drop,
            max_latency_ms=settings.gate_max_latency_ms,
        ),
    )


def open_answer_cache(settings: Settings, metrics: Metrics) -> AnswerCache | None:
    """The answer cache when ANSWER_CACHE_TTL_S is on (the settings require Redis for it)."""
    if settings.answer_cache_ttl_s <= 0 or settings.redis_url is None:
        return None
    return AnswerCache(
        str(settings.redis_url),
        prefix=settings.redis_key_prefix,
        ttl_s=settings.answer_cache_ttl_s,
        timeout_s=settings.redis_timeout_s,
        metrics=metrics,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the store, set the garbage collector's thresholds, start the registry (active
    version or bootstrap bundle), the fleet subscriber and the batcher, then serve; on
    shutdown answer what is queued, stop following the fleet, close the connections and
    give the collector its thresholds back."""
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    registry = open_registry(settings, metrics)
    fleet, store = registry.fleet, registry.store
    batcher = MicroBatcher(
        max_batch_size=settings.batch_max_size,
        max_delay_s=settings.batch_max_delay_ms / 1000,
        metrics=metrics,
    )
    answer_cache = open_answer_cache(settings, metrics)
    python_gc = gc.get_threshold()
    gc.set_threshold(*settings.gc_threshold)  # see Settings.gc_threshold
    try:
        await run_in_threadpool(registry.start, bootstrap=settings.bootstrap_bundle)
        metrics.catalog_revision.set_function(lambda: registry.catalog.revision)
        metrics.worker.labels(replica=fleet.replica_id, pid=str(os.getpid())).set(1)
        fleet.start(on_change=registry.sync, on_prepare=registry.prepare, on_poll=registry.poll)
        app.state.registry = registry
        app.state.batcher = batcher  # ArrivalMiddleware counts requests on their way to it
        async with batcher:
            app.state.request_path = RequestPath(
                registry=registry,
                batcher=batcher,
                answer_cache=answer_cache,
                metrics=metrics,
            )
            yield
    finally:
        fleet.stop()
        registry.close()
        if answer_cache is not None:
            await answer_cache.close()
        store.close()
        gc.set_threshold(*python_gc)


ADMIN_LOCK_FILE = ".admin-lock"  # the workers' admin lock without Redis (service.fleet)


def replica_name(settings: Settings) -> str | None:
    """This process's name in the fleet: REPLICA_ID (random when unset), plus the process
    id when several workers share the host, so that every worker has a name of its own."""
    if settings.workers == 1:
        return settings.replica_id
    return f"{settings.replica_id or new_replica_id()}-{os.getpid()}"


def worker_app() -> FastAPI:
    """The app of one of several workers (`WORKERS` > 1): uvicorn starts each worker in a
    fresh process, which configures its own logging."""
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return create_app(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="recsys-serve",
        summary="Sequential recommendations from compressed ONNX bundles, with hot swap.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # FastAPI's /docs and /redoc load their assets from CDNs; `routes.docs` serves its own.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()

    def body_limit(path: str) -> int:
        if path.startswith("/admin/bundles"):
            return settings.max_upload_bytes
        if path.startswith("/admin/catalog"):
            return settings.catalog_max_body_bytes
        return settings.max_body_bytes

    app.add_middleware(BodySizeLimitMiddleware, limit_for=body_limit)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # sees 413s
    app.add_middleware(RequestContextMiddleware)  # every answer has a request ID
    app.add_middleware(ArrivalMiddleware)  # outermost: a request counts from the first moment
    install_exception_handlers(app)

    app.include_router(recommend.router)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    app.include_router(docs.router)
    if settings.admin_enabled:
        app.include_router(admin.router, dependencies=[AdminDep])
        app.include_router(catalog.router, dependencies=[AdminDep])
    if settings.demo_enabled:
        app.include_router(demo.router)
    return app
