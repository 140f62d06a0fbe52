"""The OpenAPI schema is complete enough to call the API from it: every operation has a
summary and a description, every request body its types, examples, required fields and a
description per field, and the upload its content types, so Swagger UI's "Try it out" can
send a bundle. (tests/service/test_fuzz.py checks that the answers match it.)"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from fastapi.routing import APIRoute

import service.routes
from service.main import create_app
from service.settings import Settings

JSON = "application/json"
METHODS = ("get", "post", "put", "patch", "delete")
# Request body models and the fields a client must send.
REQUIRED = {
    "RecommendRequest": set(),  # `{}` is a new visitor: popular items
    "ActivateIn": {"version"},
    "ItemIdsIn": {"item_ids"},
    "ItemVectorsIn": {"items"},
    "ItemVectorIn": {"item_id", "vector"},
}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="development",
        model_dir=tmp_path_factory.mktemp("models"),
        admin_token="test-admin-token-0123456789abcdef",
        redis_url=None,
    )
    schema: dict[str, Any] = create_app(settings).openapi()  # no lifespan needed
    return schema


def operations(openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": op
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        resolved: dict[str, Any] = openapi["components"]["schemas"][name]
        return resolved
    return schema


def json_bodies(openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The application/json request body of every operation that takes one."""
    out = {}
    for label, op in operations(openapi).items():
        content = op.get("requestBody", {}).get("content", {})
        if JSON in content:
            out[label] = content[JSON]
    return out


def body_models(openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every object schema a JSON request body reaches, by title, nested ones included."""
    found: dict[str, dict[str, Any]] = {}

    def walk(schema: dict[str, Any]) -> None:
        schema = resolve(openapi, schema)
        if schema.get("type") == "object" and "title" in schema:
            if schema["title"] in found:
                return
            found[schema["title"]] = schema
        for sub in schema.get("properties", {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                walk(schema[key])
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                walk(sub)

    for media in json_bodies(openapi).values():
        walk(media["schema"])
    return found


def test_every_operation_has_a_summary_and_a_description(openapi):
    ops = operations(openapi)
    assert len(ops) >= 20
    missing = [
        label for label, op in ops.items() if not (op.get("summary") and op.get("description"))
    ]
    assert missing == []


def test_every_route_names_its_summary_instead_of_the_generated_one():
    """FastAPI makes a summary out of the function name ("Upload Bundle"); every route of
    service/routes says its own, the ones left out of the schema (demo, docs) included."""
    routes = []
    for module in pkgutil.iter_modules(service.routes.__path__):
        router = importlib.import_module(f"service.routes.{module.name}").router
        routes += [r for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 25
    assert [r.path for r in routes if not (r.summary and r.description)] == []


def test_the_bundle_upload_documents_raw_and_multipart_bodies(openapi):
    body = openapi["paths"]["/admin/bundles"]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    binary = {"type": "string", "format": "binary"}
    assert content["application/gzip"]["schema"] == binary
    assert content["application/octet-stream"]["schema"] == binary
    form = content["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert {k: v for k, v in form["properties"]["file"].items() if k != "description"} == binary


def test_recommend_documents_examples_of_its_request_and_answer(openapi):
    op = openapi["paths"]["/recommend"]["post"]
    assert "strategy: popular" in op["description"]
    media = op["requestBody"]["content"][JSON]
    examples = [e["value"] for e in media["examples"].values()]
    assert {"history": ["i12", "i7", "i99"], "k": 10} in examples
    assert any("candidates" in e for e in examples)
    answer = op["responses"]["200"]["content"][JSON]
    assert answer["example"]["items"] and answer["example"]["model_version"]
    assert resolve(openapi, answer["schema"])["title"] == "RecommendResponse"


def test_every_json_request_body_has_an_example_and_documents_415(openapi):
    bodies = json_bodies(openapi)
    assert {"POST /recommend", "POST /admin/activate", "POST /admin/catalog/unavailable"} <= set(
        bodies
    )
    for label, media in bodies.items():
        schema = resolve(openapi, media["schema"])
        assert media.get("examples") or schema.get("examples"), label
        method, path = label.split(" ", 1)
        assert "415" in openapi["paths"][path][method.lower()]["responses"], label


def test_every_request_body_field_is_described_and_required_ones_are_marked(openapi):
    models = body_models(openapi)
    assert set(models) == set(REQUIRED)
    for name, schema in models.items():
        assert set(schema.get("required", [])) == REQUIRED[name], name
        undescribed = [f for f, prop in schema["properties"].items() if not prop.get("description")]
        assert undescribed == [], name
        assert schema["additionalProperties"] is False, name  # a typo is a 422, not ignored
    assert models["RecommendRequest"]["properties"]["history"]["default"] == []
    assert models["RecommendRequest"]["properties"]["k"]["type"] == "integer"
