"""The API reference, served by the service itself: GET /docs (Swagger UI) and GET /redoc
(ReDoc), both reading GET /openapi.json.

    make serve    # then open http://localhost:8000/docs (or /redoc), online or not

FastAPI's own pages load their scripts, styles, icon and fonts from CDNs, so on a machine
without internet (an air-gapped shop, a laptop on a train) /docs stays blank. Here the pages
are FastAPI's (`get_swagger_ui_html`, `get_redoc_html`), pointed at assets this router serves
under /docs/assets from the `fastapi-standalone-docs` package, pinned in pyproject.toml and
docker/constraints.txt: Swagger UI 5.33.1 and ReDoc 2.5.4 as published, except that its ReDoc
asks for the Redocly logo at `<page>/logo-mini.svg` instead of cdn.redoc.ly. Only the files
of `ASSETS` are served, and the package's own code (which patches FastAPI) is not used. A
Content-Security-Policy holds both pages to this origin. None of these routes is in the
schema.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

router = APIRouter(tags=["docs"], include_in_schema=False)

ASSETS_PATH = "/docs/assets"
JS = "text/javascript; charset=utf-8"
# The files the pages load: name under ASSETS_PATH -> (path in the package's static/, type).
ASSETS = {
    "swagger-ui-bundle.js": ("swagger/swagger-ui-bundle.js", JS),
    "swagger-ui.css": ("swagger/swagger-ui.css", "text/css; charset=utf-8"),
    "redoc.standalone.js": ("redoc/redoc.standalone.js", JS),
    "favicon.png": ("fastapi/favicon.png", "image/png"),
}
REDOC_LOGO = ("redoc/logo-mini.svg", "image/svg+xml")  # at /redoc/logo-mini.svg: see above
# Both pages start their UI from an inline script and style elements inline; Swagger UI draws
# its icons from data: URIs; ReDoc runs its search in a worker made from a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# The assets change only with the package version, which only a new release changes.
ASSET_CACHE_CONTROL = "public, max-age=86400"


@functools.cache
def assets_dir() -> Path:
    return Path(str(files("fastapi_standalone_docs") / "static"))


def _file(path: str, media_type: str) -> FileResponse:
    return FileResponse(
        assets_dir() / path, media_type=media_type, headers={"Cache-Control": ASSET_CACHE_CONTROL}
    )


def _openapi_url(request: Request) -> str:
    # Behind a proxy that mounts the service under a prefix, the URLs carry it too.
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


def _asset_url(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_PATH}/{name}"


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    page.headers["Cache-Control"] = "no-cache"
    return page


@router.get("/docs", summary="Swagger UI")
async def swagger_ui(request: Request) -> HTMLResponse:
    """The interactive reference: every operation, its schemas and examples, "Try it out"."""
    return _secured(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - API reference",
            swagger_js_url=_asset_url(request, "swagger-ui-bundle.js"),
            swagger_css_url=_asset_url(request, "swagger-ui.css"),
            swagger_favicon_url=_asset_url(request, "favicon.png"),
            oauth2_redirect_url=None,  # no OAuth2 here: the admin API takes a bearer token
            # No validator: Swagger UI would send the schema to validator.swagger.io.
            swagger_ui_parameters={
                **(request.app.swagger_ui_parameters or {}),
                "validatorUrl": None,
            },
        )
    )


@router.get("/redoc", summary="ReDoc")
async def redoc(request: Request) -> HTMLResponse:
    """The same reference as one readable page."""
    return _secured(
        get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=_asset_url(request, "redoc.standalone.js"),
            redoc_favicon_url=_asset_url(request, "favicon.png"),
            with_google_fonts=False,
        )
    )


@router.get(ASSETS_PATH + "/{name}", summary="A file of the docs pages")
async def asset(name: str) -> FileResponse:
    """One of `ASSETS`, from the pinned package; 404 for any other name."""
    if name not in ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    return _file(*ASSETS[name])


@router.get("/redoc/logo-mini.svg", summary="ReDoc's logo")
async def redoc_logo() -> FileResponse:
    """The logo ReDoc's sidebar shows, where the packaged ReDoc asks for it."""
    return _file(*REDOC_LOGO)
