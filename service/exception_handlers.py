"""The edge: domain errors become HTTP status codes here, and only here."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from service.errors import (
    AdminBusy,
    CanaryConflict,
    InvalidBundle,
    InvalidCatalogChange,
    NoModelLoaded,
    NothingToRollBack,
    ServiceError,
    StoreUnavailable,
    UploadTooLarge,
    VersionExists,
    VersionNotFound,
)

STATUS_BY_ERROR: dict[type[ServiceError], int] = {
    NoModelLoaded: 503,
    StoreUnavailable: 503,
    VersionNotFound: 404,
    VersionExists: 409,
    NothingToRollBack: 409,
    AdminBusy: 409,
    CanaryConflict: 409,
    InvalidBundle: 422,
    InvalidCatalogChange: 422,
    UploadTooLarge: 413,
}


def status_for(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"Retry-After": "5"} if isinstance(exc, NoModelLoaded | StoreUnavailable) else None
    return JSONResponse({"detail": str(exc)}, status_code=status_for(exc), headers=headers)


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
