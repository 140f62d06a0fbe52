"""The admin API under /admin: upload, list, activate, roll back, canary, status.

With Redis every change is fleet-wide: it is taken under the fleet lock (409 while another
admin call holds it), recorded in Redis and announced to every replica (`service.fleet`).

Guarded once, where `service.main` includes this router (`dependencies=[AdminDep]`), and not
mounted at all when no ADMIN_TOKEN is configured. Upload example:

    curl -X POST localhost:8000/admin/bundles -H "Authorization: Bearer $ADMIN_TOKEN" \
         -H "Content-Type: application/gzip" --data-binary @bundles/v2.tar.gz
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from bundle import Manifest
from service.deps import RegistryDep, SettingsDep
from service.errors import InvalidBundle, UploadTooLarge
from service.registry import Registry
from service.runner import LoadedModel
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
router = APIRouter(prefix="/admin", tags=["admin"], responses=error_responses(401, 403))


def _active_out(model: LoadedModel | None) -> ActiveOut:
    if model is None:
        return ActiveOut(version=None)
    return ActiveOut(version=model.version, manifest=model.manifest.model_dump(mode="json"))


@router.post(
    "/bundles", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 413, 422)
)
async def upload_bundle(
    request: Request, registry: RegistryDep, settings: SettingsDep
) -> InstalledOut:
    """Upload a bundle .tar.gz, as the raw body (application/gzip or octet-stream) or as a
    multipart form field named `file`. It is validated and installed, not activated."""
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


@router.get("/bundles")
def list_bundles(registry: RegistryDep) -> BundlesOut:
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


@router.post("/bundles/{version}/activate", responses=error_responses(404, 409, 422, 503))
def activate(version: str, registry: RegistryDep) -> ActiveOut:
    """Load, validate and warm the version, then switch every new request to it."""
    return _active_out(registry.activate(version))


@router.post("/rollback", responses=error_responses(404, 409, 422, 503))
def rollback(registry: RegistryDep) -> ActiveOut:
    """Switch back to the version that was active before the current one."""
    return _active_out(registry.rollback())


@router.get("/active")
def active(registry: RegistryDep) -> ActiveOut:
    return _active_out(registry.current)


@router.post(
    "/activate",
    responses={
        **error_responses(400, 404, 409, 503),  # 400: a body that is not UTF-8 JSON at all
        422: {"model": ErrorOut | ValidationErrorOut},  # a refused bundle, or a bad body
    },
)
def activate_or_canary(body: ActivateIn, registry: RegistryDep) -> StatusOut:
    """Make `version` active everywhere or, with `canary_percent`, serve it to that share of
    the traffic (sticky per `user_id`) while the active version serves the rest."""
    if body.canary_percent is None:
        registry.activate(body.version)
    else:
        registry.start_canary(body.version, percent=body.canary_percent)
    return status_out(registry)


@router.post("/canary/promote", responses=error_responses(404, 409, 422, 503))
def promote_canary(registry: RegistryDep) -> StatusOut:
    """Make the canary the active version everywhere."""
    registry.promote_canary()
    return status_out(registry)


@router.post("/canary/abort", responses=error_responses(409, 503))
def abort_canary(registry: RegistryDep) -> StatusOut:
    """Drop the canary: the active version serves all traffic again."""
    registry.abort_canary()
    return status_out(registry)


@router.get("/status")
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
    )
