"""One Content-Type rule for every JSON body (service/json_body.py): read as JSON when the
type is absent, application/json or curl -d's form encoding; 415 naming the expected type
for any other. The same on /recommend, the admin API and the catalog API."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.json_body import require_json

# One JSON route of each router, with a body it accepts (v1 is installed and active).
JSON_ROUTES = [
    ("/recommend", {"history": ["i12", "i7"], "k": 3}),
    ("/admin/activate", {"version": "v1"}),
    ("/admin/catalog/unavailable", {"item_ids": ["i1"]}),
]
ROUTE_IDS = ["recommend", "admin", "catalog"]
READ_AS_JSON = [
    None,  # no Content-Type at all
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/x-www-form-urlencoded",  # curl -d '{...}'
]
REFUSED = ["text/plain", "multipart/form-data; boundary=xyz", "application/xml", "text/json"]
GZIP = {"Content-Type": "application/gzip"}


def send(client: TestClient, path: str, body: bytes, content_type: str | None, headers):
    extra = {"Content-Type": content_type} if content_type is not None else {}
    return client.post(path, content=body, headers={**headers, **extra})


@pytest.mark.parametrize("content_type", READ_AS_JSON)
@pytest.mark.parametrize(("path", "body"), JSON_ROUTES, ids=ROUTE_IDS)
def test_a_json_body_is_read_without_a_type_as_json_or_as_curl_sends_it(
    embedded_client: TestClient, admin_headers, path, body, content_type
):
    r = send(embedded_client, path, json.dumps(body).encode(), content_type, admin_headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("content_type", REFUSED)
@pytest.mark.parametrize(("path", "body"), JSON_ROUTES, ids=ROUTE_IDS)
def test_a_json_body_of_another_type_is_415_naming_the_expected_one(
    embedded_client: TestClient, admin_headers, path, body, content_type
):
    r = send(embedded_client, path, json.dumps(body).encode(), content_type, admin_headers)
    assert r.status_code == 415, r.text
    media = content_type.split(";")[0]
    assert r.json()["detail"] == (
        f"Content-Type '{media}' is not supported here: send the body as JSON "
        "(Content-Type: application/json)"
    )


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
@pytest.mark.parametrize(("path", "body"), JSON_ROUTES, ids=ROUTE_IDS)
def test_a_body_that_is_not_json_is_422_whatever_the_type_said(
    embedded_client: TestClient, admin_headers, path, body, content_type
):
    r = send(embedded_client, path, b"version=v1&k=3", content_type, admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_the_readme_curl_d_example_starts_a_canary(
    embedded_client: TestClient, admin_headers, v2_archive
):
    """README: curl -X POST .../admin/activate -H "Authorization: ..." \\
    -d '{"version": "v2", "canary_percent": 10}' (curl -d: form encoding)."""
    upload = {**admin_headers, **GZIP}
    assert embedded_client.post("/admin/bundles", content=v2_archive, headers=upload).is_success
    r = embedded_client.post(
        "/admin/activate",
        content=b'{"version": "v2", "canary_percent": 10}',
        headers={**admin_headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["canary"] == "v2" and r.json()["canary_percent"] == 10


def test_routes_without_a_json_body_keep_their_own_types(
    embedded_client: TestClient, admin_headers
):
    # The upload takes gzip or multipart; a bodiless POST ignores the type.
    r = embedded_client.post(
        "/admin/bundles", content=b"not a tarball", headers={**admin_headers, **GZIP}
    )
    assert r.status_code == 422
    r = embedded_client.post(
        "/admin/canary/abort", headers={**admin_headers, "Content-Type": "text/plain"}
    )
    assert r.status_code == 409  # no canary runs: not a 415


@pytest.mark.parametrize(
    ("content_type", "media"),
    [
        (None, ""),
        ("application/json;charset=UTF-8", "application/json"),
        ("application/vnd.api+json", "application/vnd.api+json"),
        (" application/x-www-form-urlencoded ", "application/x-www-form-urlencoded"),
    ],
)
def test_require_json_returns_the_media_type_it_reads_as_json(content_type, media):
    assert require_json(content_type) == media
