"""One Content-Type rule for every JSON request body: POST /recommend and the admin and
catalog routes that take a JSON body (POST /admin/activate, POST /admin/catalog/...).

A body is read as JSON when its Content-Type is

- absent,
- `application/json` (or any `application/*+json`), with or without a charset, or
- `application/x-www-form-urlencoded`: what `curl -d '{...}'` sends when no `-H` says
  otherwise, so the README's one-line examples work as written;

any other type (`text/plain`, `multipart/form-data`, `application/xml`, ...) is refused with
415 and a `detail` that names the type received and the one expected, before the body is
read. A body that is not JSON after all is a 422 (`json_invalid`) like any other bad body.
Uploads (POST /admin/bundles) are not JSON and have their own types.

`require_json` applies the rule; `/recommend` calls it from its body dependency, and
`JsonBodyRoute` (the route class of the admin and catalog routers) calls it for every route
with a body model before FastAPI reads that body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.routing import APIRoute

JSON_MEDIA_TYPE = "application/json"
# What `curl -d` sends; such a body is JSON all the same when it reaches a JSON route.
CURL_FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# The 415 answer in the OpenAPI schema of every JSON route.
UNSUPPORTED_MEDIA_TYPE_DOC = (
    "The body's Content-Type is neither absent, application/json nor "
    "application/x-www-form-urlencoded (curl -d)."
)


def media_type(content_type: str | None) -> str:
    """`"application/json"` from `"Application/JSON; charset=utf-8"`; `""` when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media_type(media: str) -> bool:
    return media == JSON_MEDIA_TYPE or (
        media.startswith("application/") and media.endswith("+json")
    )


def require_json(content_type: str | None) -> str:
    """The body's media type if a JSON route reads it as JSON (see the module docstring);
    else a 415 that names the type received and the one expected."""
    media = media_type(content_type)
    if media in ("", CURL_FORM_MEDIA_TYPE) or is_json_media_type(media):
        return media
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"Content-Type {media!r} is not supported here: send the body as JSON "
        f"(Content-Type: {JSON_MEDIA_TYPE})",
    )


def _as_json(request: Request) -> Request:
    """The same request, its Content-Type saying JSON: FastAPI then parses the body as JSON
    (it reads a body without one, or with curl's form type, as raw bytes)."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", JSON_MEDIA_TYPE.encode()))
    return Request({**request.scope, "headers": headers}, request.receive)


class JsonBodyRoute(APIRoute):
    """A route whose body model FastAPI reads and validates, under the rule above. Routes
    without a body model (uploads, bodiless POSTs) are left as they are."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def json_handler(request: Request) -> Response:
            media = require_json(request.headers.get("content-type"))
            return await handler(request if is_json_media_type(media) else _as_json(request))

        return json_handler
