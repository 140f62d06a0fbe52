"""The admin API under /admin: upload, list, activate, roll back, canary, status.

With Redis every change is fleet-wide: it is taken under the fleet lock (409 while another
admin call holds it), recorded in Redis and announced to every replica (`service.fleet`).

Guarded once, where `service.main` includes this router (`dependencies=[AdminDep]`), and not
mounted at all when no ADMIN_TOKEN is configured. JSON bodies follow the rule of every JSON
route (`service.json_body`, through this router's route class). Examples:

    curl -X POST localhost:8000/admin/bundles -H "Authorization: Bearer $ADMIN_TOKEN" \
         -H "Content-Type: application/gzip" --data-binary @bundles/v2.tar.gz
    curl -X POST localhost:8000/admin/activate -H "Authorization: Bearer $ADMIN_TOKEN" \
         -d '{"version": "v2", "canary_percent": 10}'
"""

from __future__ import annotations

import os

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from bundle import Manifest
from service.deps import RegistryDep, SettingsDep
from service.errors import InvalidBundle, UploadTooLarge
from service.json_body import UNSUPPORTED_MEDIA_TYPE_DOC, JsonBodyRoute
from service.model import LoadedModel
from service.registry import Registry
from service.schemas import (
    ActivateIn,
    ActiveOut,
    BundlesOut,
    ErrorOut,
    InstalledOut,
    StatusOut,
    ValidationErrorOut,
    VersionOut,
    error_responses,
)

# The prefix lives on the router (not at include_router) so route templates, and the metrics
# labels taken from them, carry the full path.
# 401 / 403 come from the guard `service.main` attaches; 409 is also another admin call
# holding the fleet lock. 422 is `{"detail": "..."}` here (a refused bundle), never a list of
# validation entries, except on POST /admin/activate, whose JSON body may fail validation too.
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses=error_responses(401, 403),
    route_class=JsonBodyRoute,
)

_BINARY = {"type": "string", "format": "binary"}
# The upload is read from the raw request, not by FastAPI: its body is documented here, so
# that Swagger UI's "Try it out" offers a file picker for either form.
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "A bundle .tar.gz (`python -m models bundle` writes one), as the raw "
        "body or as the multipart form field `file`; MAX_UPLOAD_BYTES at most.",
        "content": {
            "application/gzip": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {**_BINARY, "description": "The bundle .tar.gz."},
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


def _active_out(model: LoadedModel | None) -> ActiveOut:
    if model is None:
        return ActiveOut(version=None)
    return ActiveOut(version=model.version, manifest=model.manifest.model_dump(mode="json"))


@router.post(
    "/bundles",
    summary="Upload a bundle",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_UPLOAD_BODY,
    # 400: a multipart body that cannot be parsed.
    responses=error_responses(400, 409, 413, 422),
)
async def upload_bundle(
    request: Request, registry: RegistryDep, settings: SettingsDep
) -> InstalledOut:
    """Upload a bundle .tar.gz, as the raw body (application/gzip or octet-stream) or as a
    multipart form field named `file`. It is validated (manifest, checksums, golden pairs)
    and installed, not activated: 409 when the version is installed already, 413 over
    MAX_UPLOAD_BYTES, 422 naming what is wrong with the bundle."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        manifest = await _install_multipart(request, registry)
    else:
        limit = settings.max_upload_bytes
        with registry.upload_tempfile() as tmp:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(limit)
                tmp.write(chunk)
            if size == 0:
                raise InvalidBundle("the upload is empty; send the bundle .tar.gz as the body")
            tmp.seek(0)
            manifest = await run_in_threadpool(registry.install_archive, tmp)
    return InstalledOut(version=manifest.model_version, manifest=manifest.model_dump(mode="json"))


async def _install_multipart(request: Request, registry: Registry) -> Manifest:
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "multipart upload needs the bundle .tar.gz in a file field named 'file'",
            )
        return await run_in_threadpool(registry.install_archive, upload.file)


@router.get("/bundles", summary="List installed versions")
def list_bundles(registry: RegistryDep) -> BundlesOut:
    """Every installed version with its manifest (metrics, size, settings), and which one is
    active; a version that cannot be read has its `error`."""
    current = registry.current
    return BundlesOut(
        active=current.version if current else None,
        versions=[
            VersionOut(
                version=v.version,
                active=v.active,
                created_at=v.manifest.created_at if v.manifest else None,
                manifest=v.manifest.model_dump(mode="json") if v.manifest else None,
                error=v.error,
            )
            for v in registry.versions()
        ],
    )


@router.post(
    "/bundles/{version}/activate",
    summary="Activate a version",
    responses=error_responses(404, 409, 422, 503),
)
def activate(version: str, registry: RegistryDep) -> ActiveOut:
    """Load, validate and warm the version, then switch every new request to it, on every
    replica (ends a canary). 404 when it is not installed, 422 when it fails its checks or
    the quality gates."""
    return _active_out(registry.activate(version))


@router.post("/rollback", summary="Roll back", responses=error_responses(404, 409, 422, 503))
def rollback(registry: RegistryDep) -> ActiveOut:
    """Switch back to the version that was active before the current one (409 when there is
    none)."""
    return _active_out(registry.rollback())


@router.get("/active", summary="The active version")
def active(registry: RegistryDep) -> ActiveOut:
    """The active version and its manifest; `version` is null while none is loaded."""
    return _active_out(registry.current)


@router.post(
    "/activate",
    summary="Activate a version, or start a canary",
    responses={
        **error_responses(400, 404, 409, 503),  # 400: a body that is not UTF-8 JSON at all
        415: {"model": ErrorOut, "description": UNSUPPORTED_MEDIA_TYPE_DOC},
        422: {"model": ErrorOut | ValidationErrorOut},  # a refused bundle, or a bad body
    },
)
def activate_or_canary(body: ActivateIn, registry: RegistryDep) -> StatusOut:
    """Make `version` active everywhere or, with `canary_percent`, serve it to that share of
    the traffic (sticky per `user_id`) while the active version serves the rest. Answers
    like GET /admin/status."""
    if body.canary_percent is None:
        registry.activate(body.version)
    else:
        registry.start_canary(body.version, percent=body.canary_percent)
    return status_out(registry)


@router.post(
    "/canary/promote", summary="Promote the canary", responses=error_responses(404, 409, 422, 503)
)
def promote_canary(registry: RegistryDep) -> StatusOut:
    """Make the canary the active version everywhere (409 when no canary runs)."""
    registry.promote_canary()
    return status_out(registry)


@router.post("/canary/abort", summary="Abort the canary", responses=error_responses(409, 503))
def abort_canary(registry: RegistryDep) -> StatusOut:
    """Drop the canary: the active version serves all traffic again (409 when none runs)."""
    registry.abort_canary()
    return status_out(registry)


@router.get("/status", summary="This replica against the fleet")
def replica_status(registry: RegistryDep) -> StatusOut:
    """This replica against the fleet's stored state, with the error if it lags behind."""
    return status_out(registry)


def status_out(registry: Registry) -> StatusOut:
    s = registry.status()
    return StatusOut(
        replica=s.replica,
        serving=s.serving,
        canary=s.canary,
        canary_percent=s.canary_percent,
        standby=s.standby,
        prepared=s.prepared,
        fleet_active=s.fleet_active,
        fleet_canary=s.fleet_canary,
        error=s.error,
        subscriber_connected=s.subscriber_connected,
        catalog_revision=s.catalog_revision,
        heals=s.heals,
        pid=os.getpid(),
    )
