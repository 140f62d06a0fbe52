"""`python -m service`: serve on HOST:PORT (defaults 0.0.0.0:8000) with uvicorn, logging
in LOG_FORMAT (JSON lines by default, `service.logs`); `WORKERS` > 1 runs that many serving
processes on the port (uvicorn's workers, each building its app with `worker_app`)."""

from __future__ import annotations

from typing import Any

import uvicorn

from service.logs import configure_logging
from service.main import create_app
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # configure_logging's handler formats uvicorn's records too
        "access_log": False,  # service.logs writes the access line, with the request ID
        "proxy_headers": True,
    }
    if settings.workers > 1:
        uvicorn.run("service.main:worker_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    main()
