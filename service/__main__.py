"""`python -m service`: serve on HOST:PORT (defaults 0.0.0.0:8000) with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from service.main import create_app
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
