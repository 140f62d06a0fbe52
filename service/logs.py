"""Structured logs: one JSON object per line, a request ID on every record and response.

`configure_logging` (called by `python -m service`) sends every logger, uvicorn's included,
to one stderr handler: JSON lines (`LOG_FORMAT=json`, the default) or readable text
(`LOG_FORMAT=text`, for local development). A JSON line looks like

    {"ts": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "service.access",
     "message": "POST /recommend 200 3.1ms", "request_id": "4f0c...", "method": "POST",
     "route": "/recommend", "status": 200, "duration_ms": 3.1, "model_version": "v2"}

`RequestContextMiddleware`, the outermost middleware, gives each request an ID (the caller's
`X-Request-ID` when it is sane, else a fresh one), keeps it in a context variable so every
record logged while the request runs carries it, returns it in the `X-Request-ID` response
header (errors included), adds a `Server-Timing` header, and writes one access line per
request on the `service.access` logger.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import model_version_label, route_label

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestContextMiddleware",
    "RequestIdFilter",
    "TextFormatter",
    "configure_logging",
    "request_id_var",
    "sane_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()  # ASGI header names are lower-case bytes
# What a caller may send as its own request ID: UUIDs, hex or base64 trace IDs, W3C
# traceparent values. Anything else (too long, spaces, quotes, control characters) is
# replaced, so a header cannot smuggle text into the logs.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("service.access")

# Attributes every LogRecord has; anything else on a record came through `extra=` and is
# written as a field of its own (except uvicorn's ANSI-coloured copy of the message).
_RECORD_ATTRS = frozenset(
    {
        *vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)),
        "message",
        "asctime",
        "color_message",
    }
)


def sane_request_id(value: str | None) -> str:
    """The caller's request ID when it is sane, else a fresh one (32 hex digits)."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request ID (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def _utc(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ms), level, logger, message, request_id, the
    record's `extra` fields, and the traceback as `exc_info` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id_var.get()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal; the request ID in brackets ("-" outside a request)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


def configure_logging(*, level: str, fmt: Literal["json", "text"]) -> None:
    """Route every record (uvicorn's too) to one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class RequestContextMiddleware:
    """Request ID in, request ID out, one access line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == _HEADER_KEY), None)
        request_id = sane_request_id(incoming.decode("latin-1") if incoming else None)
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                elapsed_ms = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers", []))
                headers.append((_HEADER_KEY, request_id.encode("latin-1")))
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's ServerErrorMiddleware, outside every user middleware, would answer
            # this 500 without our headers; answering first makes it only re-raise, so the
            # server still logs the traceback.
            if not started:
                await JSONResponse({"detail": "Internal Server Error"}, status_code=500)(
                    scope, receive, send_with_id
                )
            raise
        finally:
            self._log_access(scope, request_id, status, time.perf_counter() - start)
        # Reset only when the request completed: an exception escaping to the server is
        # logged by it in this same task (uvicorn runs one task per request), and that
        # traceback line then carries the request ID too.
        request_id_var.reset(token)

    @staticmethod
    def _log_access(scope: Scope, request_id: str, status: int, elapsed_s: float) -> None:
        duration_ms = round(elapsed_s * 1000, 3)
        route = route_label(scope)
        method = scope.get("method", "")
        access_log.info(
            "%s %s %d %.1fms",
            method,
            route,
            status,
            duration_ms,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "model_version": model_version_label(scope),
                "request_id": request_id,
            },
        )
