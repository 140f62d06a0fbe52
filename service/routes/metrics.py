"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import MetricsDep
from service.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(m: MetricsDep) -> Response:
    """Every metric of this replica in the Prometheus text format: requests, latency, batch
    sizes, the answer cache, the serving and canary versions, swaps (README, "Observability")."""
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
