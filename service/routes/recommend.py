"""POST /recommend: the request path.

The body is parsed here with orjson whatever the Content-Type says (so `curl -d '{...}'`,
which sends form encoding, works), validated by pydantic, then checked against the configured
limits. Errors come back as 422 with pydantic-style `detail` entries naming the field.

The model is read once per request (the canary's for its share of traffic, by `user_id`,
else the active one); the answer comes from the answer cache when it is on and holds it
(`service.answer_cache`), else from the micro-batcher (`service.batcher`), which runs it
together with concurrent requests. One dependency per request (the body): FastAPI resolves
each one on every call, so what the app gathered once (`RequestPath`) is read from its state.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.background import BackgroundTask

from service.deps import RequestPath, get_current_model
from service.metrics import set_model_version
from service.responses import OrjsonResponse
from service.runner import RecRequest
from service.schemas import (
    RecommendRequest,
    RecommendResponse,
    ValidationErrorOut,
    error_responses,
)
from service.settings import Settings

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


async def recommend_body(request: Request) -> RecommendRequest:
    settings: Settings = request.app.state.settings  # not a dependency: one less to resolve
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
    # The schema caps IDs at 256 characters; MAX_ITEM_ID_LENGTH may be stricter.
    for field, ids in (
        ("history", body.history),
        ("candidates", body.candidates or []),
        ("exclude", body.exclude),
    ):
        long_at = next((i for i, v in enumerate(ids) if len(v) > settings.max_item_id_length), None)
        if long_at is not None:
            problems.append(
                {
                    "type": "string_too_long",
                    "loc": ("body", field, long_at),
                    "msg": f"item IDs have at most {settings.max_item_id_length} characters",
                    "input": None,
                    "ctx": {"max_length": settings.max_item_id_length},
                }
            )
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
    responses={**error_responses(413, 503), 422: {"model": ValidationErrorOut}},
)
async def recommend(http_request: Request, body: RecommendBody) -> Response:
    path: RequestPath = http_request.app.state.request_path  # not a dependency: see RequestPath
    model = await get_current_model(path.registry, body.user_id)
    answer_cache = path.answer_cache
    request = RecRequest(
        history=body.history,
        k=body.k,
        candidates=body.candidates,
        exclude=body.exclude,
        exclude_seen=body.exclude_seen,
    )
    if answer_cache is not None:
        cached = await answer_cache.get(model.cache_tag, request)
        if cached is not None:
            set_model_version(http_request, model.version)
            if body.user_id is not None:
                log.info(
                    "recommend user_id=%s version=%s answer_cache=hit", body.user_id, model.version
                )
            return Response(cached, media_type=OrjsonResponse.media_type)

    rec = await path.batcher.submit(model, request)
    set_model_version(http_request, rec.model_version)
    path.metrics.recommendations.labels(strategy=rec.strategy).inc()
    if body.user_id is not None:
        log.info(
            "recommend user_id=%s version=%s strategy=%s unknown_history=%d",
            body.user_id,
            rec.model_version,
            rec.strategy,
            rec.unknown_history,
        )
    response = OrjsonResponse(
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
    if answer_cache is not None:  # stored after the response is sent
        response.background = BackgroundTask(
            answer_cache.put, model.cache_tag, request, bytes(response.body)
        )
    return response
