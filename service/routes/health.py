"""Liveness and readiness.

/healthz: the process answers. /readyz: 200 when a model is loaded ("degraded" when the
store cannot be reached, or when this replica cannot load the version the fleet switched to:
answers still come from the model in memory, and `fleet_error` says why), 503 when no model
is loaded.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from service.deps import RegistryDep
from service.responses import OrjsonResponse
from service.schemas import HealthOut, ReadyOut, StoreState

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> HealthOut:
    """200 while the process answers, with or without a model: for a liveness probe."""
    return HealthOut()


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "No model is loaded yet."}},
)
async def readyz(registry: RegistryDep) -> OrjsonResponse:
    """200 when a model is loaded: `ready`, or `degraded` when the store cannot be reached or
    this replica cannot load the fleet's version (`fleet_error` says why; answers still come
    from the model in memory). 503 (`not_ready`) while no model is loaded: for a readiness
    probe and a load balancer."""
    serving = registry.serving
    model = serving.stable
    fleet_error = registry.fleet_error
    store_ok = await run_in_threadpool(registry.store.ping)
    status: Literal["ready", "degraded", "not_ready"]
    if model is None:
        status = "not_ready"
    elif not store_ok or fleet_error is not None:
        status = "degraded"
    else:
        status = "ready"
    body = ReadyOut(
        status=status,
        model_version=model.version if model else None,
        canary_version=serving.canary.version if serving.canary else None,
        replica=registry.fleet.replica_id,
        store=StoreState(backend=registry.store.backend, ok=store_ok),
        catalog_revision=registry.catalog.revision,
        fleet_error=fleet_error,
    )
    return OrjsonResponse(body.model_dump(), status_code=200 if model is not None else 503)
