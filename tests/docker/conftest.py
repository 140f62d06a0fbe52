"""Helpers for the checks of docker/ and docker-compose.yml: the repository's paths and the
routes the app really serves. No Docker engine is needed (none is assumed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.main import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="session")
def get_routes() -> set[str]:
    """Paths the app answers GET on, from its OpenAPI schema (create_app builds the routes;
    nothing is loaded)."""
    app = create_app(Settings(_env_file=None, admin_token="x" * 32))  # type: ignore[call-arg]
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


@pytest.fixture(scope="session")
def settings_env_vars() -> set[str]:
    """The environment variables Settings reads: its field names, upper-cased."""
    return {name.upper() for name in Settings.model_fields}
