"""Request and response bodies of the HTTP API.

Request bodies are strict (`RequestBody`): a field takes its own JSON type and nothing that
could be read as it. `"k": true`, `"k": "5"` and `"k": 5.0` are 422, not 1 or 5 items (a
JSON client that computed a float for a count has a bug worth hearing about); item IDs are
strings, never numbers; booleans are `true` or `false`, not `"yes"` or `1`; a number field
(`canary_percent`, vectors) takes any JSON number, integers included, but not `true` or
`"10"`. Unknown fields are 422 too, so a typo is not silently ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RequestBody(BaseModel):
    """Base of every request body: strict types, no unknown fields (module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(RequestBody):
    # Nothing is required: `{}` (a new visitor) is answered from popularity.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"history": ["i12", "i7", "i99"], "k": 10},
                {"history": ["i12"], "k": 3, "candidates": ["i3", "i4", "i5"], "user_id": "u-42"},
            ]
        }
    )

    # `default=[]` rather than a factory so that the schema shows the default; pydantic
    # copies it for each request.
    history: list[ItemId] = Field(
        default=[],
        description="External item IDs the user interacted with, most recent last "
        "(MAX_HISTORY at most). Empty or left out for a new visitor: the answer is then the "
        "most popular items (`strategy: popular`).",
    )
    k: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="How many items to return: an integer (MAX_K at most).",
    )
    candidates: list[ItemId] | None = Field(
        default=None,
        description="Rerank only these items (e.g. what a search page retrieved); left out: "
        "the whole catalog.",
    )
    exclude: list[ItemId] = Field(default=[], description="Never return these items.")
    exclude_seen: bool = Field(default=True, description="Never return items from the history.")
    user_id: str | None = Field(
        default=None,
        max_length=256,
        description="Logged; places the request in a canary split (sticky per user).",
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str
    strategy: Literal["model", "popular"]
    unknown_history: int = Field(description="History IDs not in the model's vocabulary (dropped).")
    unknown_candidates: int = Field(description="Candidate IDs not in the vocabulary (ignored).")


class VersionOut(BaseModel):
    version: str
    active: bool
    created_at: datetime | None = None
    manifest: dict[str, Any] | None = None
    error: str | None = None


class BundlesOut(BaseModel):
    active: str | None
    versions: list[VersionOut]


class ActiveOut(BaseModel):
    version: str | None
    manifest: dict[str, Any] | None = None


class InstalledOut(BaseModel):
    version: str
    manifest: dict[str, Any]


class ErrorOut(BaseModel):
    """The body of every error the service raises itself (4xx/5xx other than request
    validation, whose 422 lists pydantic-style entries)."""

    detail: str


class ValidationErrorOut(BaseModel):
    """422 of a request that fails validation: pydantic-style entries naming each field."""

    detail: list[dict[str, Any]]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting `codes` as `ErrorOut` answers."""
    return {code: {"model": ErrorOut} for code in codes}


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class StoreState(BaseModel):
    backend: str
    ok: bool


class ReadyOut(BaseModel):
    status: Literal["ready", "degraded", "not_ready"]
    model_version: str | None
    canary_version: str | None = None
    replica: str
    store: StoreState
    fleet_error: str | None = Field(
        default=None, description="Why this replica does not serve the fleet's version."
    )
    catalog_revision: int = Field(
        default=0, description="The live catalog revision this replica serves under."
    )


class ActivateIn(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"version": "v2"}, {"version": "v2", "canary_percent": 10}]}
    )

    version: str = Field(
        min_length=1, max_length=128, description="An installed version (GET /admin/bundles)."
    )
    canary_percent: float | None = Field(
        default=None,
        gt=0,
        lt=100,
        description="Serve the version to this share of traffic only (a canary); "
        "omit to make it the active version.",
    )


class StatusOut(BaseModel):
    """This replica against the fleet: what it serves, what the store says it should."""

    replica: str
    serving: str | None = Field(description="The active version this replica answers with.")
    canary: str | None = Field(description="The canary version this replica answers with.")
    canary_percent: float
    standby: str | None = Field(
        description="The previously active version, kept loaded: swapping back to it is instant."
    )
    prepared: str | None = Field(
        description="A version uploaded to the fleet (or announced by a replica about to "
        "activate it), loaded ahead: activating it is instant."
    )
    fleet_active: str | None = Field(description="The active version recorded in the store.")
    fleet_canary: str | None
    error: str | None = Field(description="Why this replica does not serve the fleet's state.")
    subscriber_connected: bool | None = Field(
        description="Listening to the fleet's swap events; null without Redis."
    )
    catalog_revision: int = Field(
        description="The live catalog revision this replica serves under (/admin/catalog)."
    )
    heals: int = Field(
        description="Times this replica wrote the fleet state back into a store that had "
        "lost it (a FLUSHALL, a Redis restarted without persistence)."
    )
    pid: int = Field(description="The process that answered: one of the host's WORKERS.")


class SampleHistory(BaseModel):
    name: str
    history: list[str] = Field(description="External item IDs, most recent last.")


class DemoSamplesOut(BaseModel):
    """Browsing histories for the demo page to offer, from the active model's vocabulary."""

    model_version: str
    histories: list[SampleHistory]


# --- the live catalog (/admin/catalog) --------------------------------------------------


class ItemIdsIn(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"item_ids": ["B00ABC123"]}]})

    item_ids: list[ItemId] = Field(
        min_length=1,
        description="External item IDs (CATALOG_MAX_IDS per call at most).",
        examples=[["B00ABC123", "B00XYZ789"]],
    )


class AvailabilityOut(BaseModel):
    revision: int = Field(description="The catalog revision after the change.")
    changed: int = Field(description="IDs whose availability this call changed.")
    unavailable: int = Field(description="Items unavailable now, fleet-wide.")


class UnavailableOut(BaseModel):
    revision: int
    count: int
    item_ids: list[str] = Field(description="Unavailable item IDs, sorted.")


class ItemVectorIn(RequestBody):
    item_id: ItemId = Field(description="The item's external ID.")
    vector: list[float] = Field(
        description="The item in the version's embedding space: `dim` finite numbers "
        "(the manifest's), as `python -m models foldin` writes them."
    )


class ItemVectorsIn(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [{"item_id": "B00NEW001", "vector": [0.12, -0.5, 0.03, 1]}]}]
        }
    )

    version: str | None = Field(
        default=None,
        description="The version the vectors belong to, as `python -m models foldin` writes "
        "it in its file; when given, it must be the version in the path.",
    )
    items: list[ItemVectorIn] = Field(
        min_length=1, description="Items to add or replace (CATALOG_MAX_VECTORS per call)."
    )


class ItemVectorsOut(BaseModel):
    version: str
    revision: int
    added: int = Field(description="Items the version did not know before this call.")
    replaced: int = Field(description="Items whose vector this call replaced.")
    total: int = Field(description="Added or replaced items the version holds now.")


class VersionItemsOut(BaseModel):
    version: str
    revision: int
    count: int
    item_ids: list[str]


class CatalogOut(BaseModel):
    revision: int = Field(description="The fleet's catalog revision (the store's).")
    applied_revision: int = Field(description="The revision this replica serves under.")
    unavailable: int = Field(description="Unavailable items, fleet-wide.")
    items: dict[str, int] = Field(description="Added or replaced item vectors per version.")
    replica: str
