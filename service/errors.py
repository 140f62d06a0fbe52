"""Domain errors of the service. Routes translate them to HTTP status codes in one place
(`service.exception_handlers`); nothing below the routes knows about HTTP."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; the message is safe to show to the API caller."""


class NoModelLoaded(ServiceError):
    def __init__(self) -> None:
        super().__init__("no model is loaded yet: upload and activate a bundle")


class VersionNotFound(ServiceError):
    def __init__(self, version: str) -> None:
        super().__init__(f"model version {version!r} is not installed")
        self.version = version


class VersionExists(ServiceError):
    def __init__(self, version: str, *, in_fleet: bool = False) -> None:
        where = "exists in the fleet with another archive" if in_fleet else "is already installed"
        super().__init__(f"model version {version!r} {where}")
        self.version = version


class InvalidBundle(ServiceError):
    """A bundle failed validation; the serving model is untouched."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"bundle rejected: {reason}")
        self.reason = reason


class GateFailed(InvalidBundle):
    """A valid bundle that an optional promotion gate (accuracy, latency) refuses."""


class NothingToRollBack(ServiceError):
    def __init__(self) -> None:
        super().__init__("there is no previously active version to roll back to")


class UploadTooLarge(ServiceError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload is larger than the limit of {limit} bytes")
        self.limit = limit


class StoreUnavailable(ServiceError):
    """The shared store (Redis) cannot be reached. Serving goes on from memory."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"store unavailable: {detail}")


class AdminBusy(ServiceError):
    """Another admin operation holds the fleet-wide lock; nothing was changed."""

    def __init__(self, holder: str) -> None:
        super().__init__(
            f"another admin operation is in progress ({holder}); nothing was changed, try again"
        )
        self.holder = holder


class CanaryConflict(ServiceError):
    """A canary operation that does not fit the current state (none running, or the active
    version itself as canary)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidCatalogChange(ServiceError):
    """A catalog change that cannot be applied (wrong dimension, not finite, too many IDs);
    nothing was changed."""
