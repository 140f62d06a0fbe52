"""Schemathesis against the app's own OpenAPI schema, in process (`benchmarks.fuzz`): a
fixed, derandomized set of requests per operation, admin routes included; no 5xx, and every
answer matches the schema the API documents."""

from __future__ import annotations

import pytest
from schemathesis.python import asgi

from benchmarks.fuzz import run_fuzz
from service.main import create_app
from tests.conftest import ADMIN_TOKEN

EXAMPLES = 50


@pytest.fixture
def fuzzed_app(make_settings, v1_dir):
    app = create_app(make_settings(bootstrap_bundle=v1_dir))
    yield app
    asgi.shutdown_lifespans()  # schemathesis started the app's lifespan; stop it now


# ~600 requests, about 10 s on an idle core; the timeout only stops a runaway.
@pytest.mark.timeout(300)
def test_fuzzing_every_operation_finds_no_server_error_or_schema_violation(fuzzed_app):
    result = run_fuzz(fuzzed_app, EXAMPLES, token=ADMIN_TOKEN)
    assert "POST /recommend" in result["operations"]
    assert "POST /admin/bundles/{version}/activate" in result["operations"]
    assert result["cases"] >= EXAMPLES
    assert result["server_errors"] == 0, result["failures"]
    assert result["schema_violations"] == 0, result["failures"]


def test_refusals_are_documented_with_the_body_they_really_have(embedded_client):
    """A refused bundle answers {"detail": "..."}: the schema must say so, not FastAPI's
    default list of validation errors (which the fuzzer cannot reach: no bad version is
    installed for it to activate)."""
    paths = embedded_client.get("/openapi.json").json()["paths"]

    def ref(path: str, method: str, code: str) -> str:
        schema = paths[path][method]["responses"][code]["content"]["application/json"]["schema"]
        return str(schema["$ref"]).rsplit("/", 1)[-1]

    assert ref("/admin/bundles/{version}/activate", "post", "422") == "ErrorOut"
    assert ref("/admin/bundles", "post", "422") == "ErrorOut"
    assert ref("/admin/bundles", "post", "413") == "ErrorOut"
    assert ref("/admin/rollback", "post", "409") == "ErrorOut"
    assert ref("/admin/active", "get", "401") == "ErrorOut"
    assert ref("/recommend", "post", "422") == "ValidationErrorOut"
    assert ref("/recommend", "post", "413") == "ErrorOut"
