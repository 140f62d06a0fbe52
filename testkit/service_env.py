"""The environment a test or benchmark starts a service process with: the caller's, without
any of the service's own settings, so a developer's shell (a REDIS_URL, a BATCH_MAX_SIZE)
never changes what a test or a benchmark measures."""

from __future__ import annotations

import os

from service.settings import Settings

# Every environment variable the service reads: its settings' names, upper-cased.
SERVICE_SETTINGS = frozenset(name.upper() for name in Settings.model_fields)


def without_service_settings(extra: frozenset[str] = frozenset()) -> dict[str, str]:
    """os.environ without the service's settings (and without `extra`)."""
    drop = SERVICE_SETTINGS | extra
    return {k: v for k, v in os.environ.items() if k.upper() not in drop}
