"""`python -m service`: serve on HOST:PORT (defaults 0.0.0.0:8000) with uvicorn, logging
in LOG_FORMAT (JSON lines by default, `service.logs`)."""

from __future__ import annotations

import uvicorn

from service.logs import configure_logging
from service.main import create_app
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configure_logging's handler formats uvicorn's records too
        access_log=False,  # service.logs writes the access line, with the request ID
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
