"""POST /recommend: the request path.

The body is JSON under the rule of every JSON route (`service.json_body`: Content-Type
absent, application/json, or curl -d's form encoding; any other type is 415). It is parsed
here with orjson, validated by pydantic (strict types: `service.schemas`), then checked
against the configured limits. Errors come back as 422 with pydantic-style `detail` entries
naming the field.

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
from service.json_body import JSON_MEDIA_TYPE, UNSUPPORTED_MEDIA_TYPE_DOC, require_json
from service.metrics import set_model_version
from service.model import RecRequest
from service.responses import OrjsonResponse
from service.schemas import (
    ErrorOut,
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
    require_json(request.headers.get("content-type"))
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


# The body is read by `recommend_body`, not by FastAPI, so the schema documents it here.
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "What the shopper did, and what to answer. Sent as JSON; curl -d's "
        "form encoding and no Content-Type are read as JSON too.",
        "content": {
            JSON_MEDIA_TYPE: {
                "schema": RecommendRequest.model_json_schema(),
                "examples": {
                    "history": {
                        "summary": "The next items for a browsing history",
                        "value": {"history": ["i12", "i7", "i99"], "k": 10},
                    },
                    "rerank": {
                        "summary": "Rerank a search page's results for a shopper",
                        "value": {
                            "history": ["i12", "i7"],
                            "k": 3,
                            "candidates": ["i3", "i4", "i5", "i40"],
                            "exclude": ["i4"],
                            "user_id": "u-42",
                        },
                    },
                    "new_visitor": {
                        "summary": "A new visitor: the most popular items",
                        "value": {"history": [], "k": 5},
                    },
                },
            }
        },
    }
}
_ANSWER_EXAMPLE = {
    "items": [
        {"item_id": "i100", "score": 6.172031402587891},
        {"item_id": "i51", "score": 6.059101104736328},
        {"item_id": "i3", "score": 5.877201080322266},
    ],
    "model_version": "v2",
    "strategy": "model",
    "unknown_history": 1,
    "unknown_candidates": 0,
}


@router.post(
    "/recommend",
    summary="Recommend items for a browsing history",
    response_model=RecommendResponse,
    response_class=OrjsonResponse,
    openapi_extra=_OPENAPI_BODY,
    responses={
        200: {"content": {JSON_MEDIA_TYPE: {"example": _ANSWER_EXAMPLE}}},
        **error_responses(413, 503),
        415: {"model": ErrorOut, "description": UNSUPPORTED_MEDIA_TYPE_DOC},
        422: {"model": ValidationErrorOut},
    },
)
async def recommend(http_request: Request, body: RecommendBody) -> Response:
    """The `k` items the serving model ranks highest after `history` (most recent last),
    best first, each with its score, and the version that computed them. With `candidates`,
    only those are ranked (reranking); `exclude` and, by default, the history's own items are
    never answered, nor items the live catalog marks unavailable. An empty history, or one
    of IDs the model does not know, gets the most popular items (`strategy: popular`).

    With a canary running, `user_id` places the shopper in its share of traffic (sticky);
    `model_version` says which version answered. 413 for a body over MAX_BODY_BYTES, 415 for
    a Content-Type that is not JSON, 422 naming each invalid field (types are strict: `"k": "5"`
    or `true` is refused) or a list over its limit, 503 while no model is loaded."""
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
