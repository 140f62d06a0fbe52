"""POST /recommend: the request path.

The body is parsed here with orjson whatever the Content-Type says (so `curl -d '{...}'`,
which sends form encoding, works), validated by pydantic, then checked against the configured
limits. Errors come back as 422 with pydantic-style `detail` entries naming the field.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service.deps import MetricsDep, ModelDep, SettingsDep
from service.responses import OrjsonResponse
from service.runner import RecRequest
from service.schemas import RecommendRequest, RecommendResponse

log = logging.getLogger(__name__)
router = APIRouter(tags=["recommend"])


def _too_long(field: str, got: int, limit: int) -> dict[str, Any]:
    return {
        "type": "too_long",
        "loc": ("body", field),
        "msg": f"{field} has {got} items; at most {limit} are allowed",
        "input": None,
        "ctx": {"max_length": limit, "actual_length": got},
    }


async def recommend_body(request: Request, settings: SettingsDep) -> RecommendRequest:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", e.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": e.msg},
                }
            ]
        ) from e
    try:
        body = RecommendRequest.model_validate(data)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from e

    problems = []
    if len(body.history) > settings.max_history:
        problems.append(_too_long("history", len(body.history), settings.max_history))
    if body.candidates is not None and len(body.candidates) > settings.max_candidates:
        problems.append(_too_long("candidates", len(body.candidates), settings.max_candidates))
    if len(body.exclude) > settings.max_exclude:
        problems.append(_too_long("exclude", len(body.exclude), settings.max_exclude))
    if body.k > settings.max_k:
        problems.append(
            {
                "type": "less_than_equal",
                "loc": ("body", "k"),
                "msg": f"k is {body.k}; at most {settings.max_k} is allowed",
                "input": body.k,
                "ctx": {"le": settings.max_k},
            }
        )
    if problems:
        raise RequestValidationError(problems)
    return body


RecommendBody = Annotated[RecommendRequest, Depends(recommend_body)]

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RecommendRequest.model_json_schema()}},
    }
}


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    response_class=OrjsonResponse,
    openapi_extra=_OPENAPI_BODY,
)
def recommend(body: RecommendBody, model: ModelDep, metrics: MetricsDep) -> OrjsonResponse:
    rec = model.recommend(
        RecRequest(
            history=body.history,
            k=body.k,
            candidates=body.candidates,
            exclude=body.exclude,
            exclude_seen=body.exclude_seen,
        )
    )
    if rec.strategy == "model":
        metrics.inference.observe(rec.inference_s)
        metrics.queue.observe(rec.queue_s)
    metrics.recommendations.labels(strategy=rec.strategy).inc()
    if body.user_id is not None:
        log.info(
            "recommend user_id=%s version=%s strategy=%s unknown_history=%d",
            body.user_id,
            rec.model_version,
            rec.strategy,
            rec.unknown_history,
        )
    return OrjsonResponse(
        {
            "items": [
                {"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores, strict=True)
            ],
            "model_version": rec.model_version,
            "strategy": rec.strategy,
            "unknown_history": rec.unknown_history,
            "unknown_candidates": rec.unknown_candidates,
        }
    )
