"""Request bodies are strict (service/schemas.py `RequestBody`): no bool or string where an
integer is meant, no number where an ID is meant, no string or bool where a number is
meant; integers are numbers. Through the HTTP API, each 422 naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.schemas import ActivateIn, RecommendRequest
from tests.conftest import V1

GZIP = {"Content-Type": "application/gzip"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"history": ["i1"], "k": True}, ["body", "k"]),  # was 1 item
        ({"history": ["i1"], "k": "5"}, ["body", "k"]),  # was 5 items
        ({"history": ["i1"], "k": 5.0}, ["body", "k"]),  # a count is an integer
        ({"history": ["i1"], "k": 5.5}, ["body", "k"]),
        ({"history": [1.5]}, ["body", "history", 0]),
        ({"history": [True]}, ["body", "history", 0]),
        ({"history": ["i1"], "candidates": [12]}, ["body", "candidates", 0]),
        ({"history": ["i1"], "exclude": [3.0]}, ["body", "exclude", 0]),
        ({"history": ["i1"], "exclude_seen": "false"}, ["body", "exclude_seen"]),  # was True
        ({"history": ["i1"], "exclude_seen": 0}, ["body", "exclude_seen"]),
        ({"history": ["i1"], "user_id": 42}, ["body", "user_id"]),
    ],
    ids=[
        "k_true",
        "k_string",
        "k_float_integral",
        "k_float",
        "float_id",
        "bool_id",
        "int_candidate",
        "float_exclude",
        "string_bool",
        "int_bool",
        "int_user_id",
    ],
)
def test_recommend_refuses_values_of_another_json_type(
    embedded_client: TestClient, body: dict[str, Any], loc: list[Any]
):
    r = embedded_client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


def test_recommend_still_takes_what_the_schema_says(embedded_client: TestClient):
    body = {"history": ["i1"], "k": 4, "exclude_seen": False, "exclude": ["i2"], "user_id": "u"}
    r = embedded_client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 4
    assert embedded_client.post("/recommend", json={}).json()["strategy"] == "popular"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"version": "v2", "canary_percent": True}, ["body", "canary_percent"]),  # was 1 %
        ({"version": "v2", "canary_percent": "10"}, ["body", "canary_percent"]),
        ({"version": 2}, ["body", "version"]),
        ({"version": "v2", "canary_percent": 10, "extra": 1}, ["body", "extra"]),
    ],
    ids=["percent_true", "percent_string", "int_version", "unknown_field"],
)
def test_activate_refuses_values_of_another_json_type(
    embedded_client: TestClient, admin_headers, v2_archive, body, loc
):
    embedded_client.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    r = embedded_client.post("/admin/activate", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert embedded_client.get("/admin/status", headers=admin_headers).json()["canary"] is None


@pytest.mark.parametrize("percent", [10, 12.5])
def test_a_canary_percent_is_any_json_number(
    embedded_client: TestClient, admin_headers, v2_archive, percent
):
    embedded_client.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    body = {"version": "v2", "canary_percent": percent}
    r = embedded_client.post("/admin/activate", json=body, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["canary_percent"] == percent


@pytest.mark.parametrize(
    ("item", "loc"),
    [
        ({"item_id": "n", "vector": [True] * V1.dim}, ["body", "items", 0, "vector", 0]),
        ({"item_id": "n", "vector": ["0.5"] * V1.dim}, ["body", "items", 0, "vector", 0]),
        ({"item_id": 7, "vector": [0.5] * V1.dim}, ["body", "items", 0, "item_id"]),
    ],
    ids=["bool_vector", "string_vector", "int_id"],
)
def test_catalog_refuses_values_of_another_json_type(
    embedded_client: TestClient, admin_headers, item, loc
):
    r = embedded_client.post(
        "/admin/catalog/items/v1", json={"items": [item]}, headers=admin_headers
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    r = embedded_client.post(
        "/admin/catalog/unavailable", json={"item_ids": [1.5]}, headers=admin_headers
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "item_ids", 0]
    assert embedded_client.get("/admin/catalog", headers=admin_headers).json()["revision"] == 0


def test_catalog_vectors_take_integers_as_numbers(embedded_client: TestClient, admin_headers):
    item = {"item_id": "n", "vector": [1, 0, -1, 0.5] + [0] * (V1.dim - 4)}
    r = embedded_client.post(
        "/admin/catalog/items/v1", json={"items": [item]}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1


def test_the_models_are_strict_outside_http_too():
    """benchmarks/service_eval.py validates with the same model: it refuses what /recommend
    refuses."""
    with pytest.raises(ValueError, match="valid integer"):
        RecommendRequest.model_validate({"k": "5"})
    with pytest.raises(ValueError, match="valid number"):
        ActivateIn.model_validate({"version": "v2", "canary_percent": False})
    assert ActivateIn.model_validate({"version": "v2", "canary_percent": 5}).canary_percent == 5.0
