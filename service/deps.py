"""FastAPI dependencies as `Annotated` aliases; route signatures read like the API.

The settings, the registry, the metrics, the batcher and the answer cache live on `app.state`
(set by `create_app` and its lifespan), so several apps with different settings can coexist,
as they do in tests.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.answer_cache import AnswerCache
from service.batcher import MicroBatcher
from service.errors import NoModelLoaded
from service.metrics import Metrics
from service.model import LoadedModel
from service.registry import Registry
from service.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


@dataclass(frozen=True)
class RequestPath:
    """Everything /recommend needs from the app, gathered once by the lifespan and read by
    the route from `app.state.request_path`: not a dependency, since FastAPI resolves each
    dependency on every request."""

    registry: Registry
    batcher: MicroBatcher
    answer_cache: AnswerCache | None  # None when it is off (ANSWER_CACHE_TTL_S=0)
    metrics: Metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_current_model(registry: Registry, user_id: str | None) -> LoadedModel:
    """The model for one request, read once (the whole request runs on this reference): the
    canary for the canary's share of traffic (sticky by `user_id`), else the active one. No
    network call: the split is computed from the in-memory snapshot (`service.serving`).
    The recommend route calls it once it has parsed the body (the user id is in it)."""
    model = registry.model_for(user_id)
    if model is None:
        raise NoModelLoaded()
    return model


_bearer = HTTPBearer(auto_error=False)


async def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Guards the whole admin router (attached once, at include_router)."""
    if settings.admin_token is None:  # the router is not mounted then; defence in depth
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "admin API needs an 'Authorization: Bearer <token>' header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.admin_token.get_secret_value().encode()
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin token is not valid")


AdminDep = Depends(require_admin)
