"""The live item catalog's admin API under /admin/catalog (`service.catalog`).

Item availability is fleet-wide and keyed by item ID; item vectors belong to one version.
Every change is recorded in the store with a new revision, applied on this replica before
the call answers, and announced to the others (`service.fleet`), which apply it within
about a second. Guarded like the rest of the admin API; JSON bodies follow the rule of every
JSON route (`service.json_body`, through this router's route class). Examples:

    curl -X POST localhost:8000/admin/catalog/unavailable -H "Authorization: Bearer $ADMIN_TOKEN" \
         -d '{"item_ids": ["B00ABC123"]}'
    curl -X POST localhost:8000/admin/catalog/items/v2 -H "Authorization: Bearer $ADMIN_TOKEN" \
         -H "Content-Type: application/json" --data-binary @new-items.json
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter

from service.catalog import check_item_ids
from service.deps import RegistryDep, SettingsDep
from service.errors import InvalidCatalogChange
from service.json_body import UNSUPPORTED_MEDIA_TYPE_DOC, JsonBodyRoute
from service.schemas import (
    AvailabilityOut,
    CatalogOut,
    ErrorOut,
    ItemIdsIn,
    ItemVectorsIn,
    ItemVectorsOut,
    UnavailableOut,
    ValidationErrorOut,
    VersionItemsOut,
    error_responses,
)
from service.settings import Settings

# 422 is a refused change (`{"detail": "..."}`) or a body that fails validation (a list).
router = APIRouter(
    prefix="/admin/catalog",
    tags=["catalog"],
    responses={
        **error_responses(400, 401, 403, 413, 503),
        422: {"model": ErrorOut | ValidationErrorOut},
    },
    route_class=JsonBodyRoute,
)
# On the routes with a JSON body.
_UNSUPPORTED_MEDIA_TYPE: dict[int | str, dict[str, Any]] = {
    415: {"model": ErrorOut, "description": UNSUPPORTED_MEDIA_TYPE_DOC}
}


def _checked_ids(body: ItemIdsIn, settings: Settings) -> list[str]:
    if len(body.item_ids) > settings.catalog_max_ids:
        raise InvalidCatalogChange(
            f"{len(body.item_ids)} item IDs in one call; at most {settings.catalog_max_ids} "
            "are allowed (CATALOG_MAX_IDS): split the change"
        )
    check_item_ids(body.item_ids, max_length=settings.max_item_id_length)
    return body.item_ids


@router.get("", summary="The live catalog at a glance")
def catalog_summary(registry: RegistryDep) -> CatalogOut:
    """The fleet's catalog revision, the one this replica serves under, how many items are
    unavailable, and how many item vectors each version has added or replaced."""
    layer = registry.catalog
    return CatalogOut(
        revision=registry.store.get_state().catalog_revision or 0,
        applied_revision=layer.revision,
        unavailable=len(layer.unavailable),
        items={version: len(rows) for version, rows in layer.items.items()},
        replica=registry.fleet.replica_id,
    )


@router.post("/unavailable", summary="Mark items unavailable", responses=_UNSUPPORTED_MEDIA_TYPE)
def mark_unavailable(
    body: ItemIdsIn, registry: RegistryDep, settings: SettingsDep
) -> AvailabilityOut:
    """Never answer these items again, on any replica and any version, until they are made
    available. IDs no model knows yet may be marked too."""
    changed, revision = registry.set_availability(_checked_ids(body, settings), available=False)
    return AvailabilityOut(
        revision=revision, changed=changed, unavailable=len(registry.catalog.unavailable)
    )


@router.post("/available", summary="Mark items available", responses=_UNSUPPORTED_MEDIA_TYPE)
def mark_available(
    body: ItemIdsIn, registry: RegistryDep, settings: SettingsDep
) -> AvailabilityOut:
    """Answer these items again, on every replica and version (IDs not marked unavailable
    are left as they are)."""
    changed, revision = registry.set_availability(_checked_ids(body, settings), available=True)
    return AvailabilityOut(
        revision=revision, changed=changed, unavailable=len(registry.catalog.unavailable)
    )


@router.get("/unavailable", summary="List unavailable items")
def list_unavailable(registry: RegistryDep) -> UnavailableOut:
    """Every unavailable item ID, as the store holds them."""
    layer = registry.store.get_catalog()
    return UnavailableOut(
        revision=layer.revision,
        count=len(layer.unavailable),
        item_ids=sorted(layer.unavailable),
    )


@router.post(
    "/items/{version}",
    summary="Add or replace item vectors",
    responses={**error_responses(404), **_UNSUPPORTED_MEDIA_TYPE},
)
def put_item_vectors(
    version: str, body: ItemVectorsIn, registry: RegistryDep, settings: SettingsDep
) -> ItemVectorsOut:
    """Add items to a version's catalog, or replace their vectors: each a vector in that
    version's embedding space (`python -m models foldin` computes them for new items).
    They are stored encoded like the version's item table; all or nothing."""
    if body.version is not None and body.version != version:
        raise InvalidCatalogChange(
            f"the body's vectors are of version {body.version!r}, the path names {version!r}"
        )
    if len(body.items) > settings.catalog_max_vectors:
        raise InvalidCatalogChange(
            f"{len(body.items)} item vectors in one call; at most "
            f"{settings.catalog_max_vectors} are allowed (CATALOG_MAX_VECTORS): split the change"
        )
    ids = [item.item_id for item in body.items]
    check_item_ids(ids, max_length=settings.max_item_id_length)
    lengths = {len(item.vector) for item in body.items}
    if len(lengths) != 1:
        raise InvalidCatalogChange(f"the vectors have different lengths: {sorted(lengths)}")
    vectors = np.array([item.vector for item in body.items], dtype=np.float64)
    added, replaced, revision = registry.put_item_vectors(version, ids, vectors)
    return ItemVectorsOut(
        version=version,
        revision=revision,
        added=added,
        replaced=replaced,
        total=len(registry.catalog.vectors_of(version)),
    )


@router.get("/items/{version}", summary="List a version's added items")
def list_item_vectors(version: str, registry: RegistryDep) -> VersionItemsOut:
    """The items whose vectors the catalog adds to (or replaces in) a version."""
    layer = registry.store.get_catalog()
    ids = sorted(layer.vectors_of(version))
    return VersionItemsOut(version=version, revision=layer.revision, count=len(ids), item_ids=ids)


@router.delete("/items/{version}", summary="Drop a version's added items")
def delete_item_vectors(version: str, registry: RegistryDep) -> VersionItemsOut:
    """Drop every added or replaced vector of a version: it answers from its bundle alone."""
    revision = registry.delete_item_vectors(version)
    return VersionItemsOut(version=version, revision=revision, count=0, item_ids=[])
