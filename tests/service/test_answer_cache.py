from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.factories import RedisServer

BODY = {"history": ["i12", "i7", "i99"], "k": 5}
TTL_S = 60


def cache_key(prefix: str, version: str, body: dict[str, Any]) -> str:
    """The documented key: version@catalog revision and the sha256 of the canonical request
    (no user_id)."""
    normalized = {
        "history": body.get("history", []),
        "k": body.get("k", 10),
        "candidates": body.get("candidates"),
        "exclude": body.get("exclude", []),
        "exclude_seen": body.get("exclude_seen", True),
    }
    digest = hashlib.sha256(orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{prefix}:answers:{version}:{digest}"


def cache_lookups(client: TestClient, result: str) -> float:
    app: Any = client.app
    value = app.state.metrics.registry.get_sample_value(
        "recsys_answer_cache_requests_total", {"result": result}
    )
    return 0.0 if value is None else float(value)


@pytest.fixture
def cache_client(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    v1_dir: Path,
    redis_url: str,
    redis_prefix: str,
) -> TestClient:
    """The service serving v1 on the shared test Redis, with the answer cache on."""
    return client_for(
        make_settings(
            bootstrap_bundle=v1_dir,
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
            answer_cache_ttl_s=TTL_S,
        )
    )


def test_a_repeated_request_is_served_from_the_cache_byte_for_byte(
    cache_client: TestClient, redis_url, redis_prefix
):
    first = cache_client.post("/recommend", json={**BODY, "user_id": "u-1"})
    second = cache_client.post("/recommend", json={**BODY, "user_id": "u-2"})  # not in the key
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert (cache_lookups(cache_client, "miss"), cache_lookups(cache_client, "hit")) == (1, 1)

    r = redis.Redis.from_url(redis_url)
    try:
        key = cache_key(redis_prefix, "v1@0", BODY)
        assert r.get(key) == first.content
        assert 0 < r.pttl(key) <= TTL_S * 1000
    finally:
        r.close()


def test_a_different_request_misses(cache_client: TestClient):
    a = cache_client.post("/recommend", json=BODY).json()
    b = cache_client.post("/recommend", json={**BODY, "exclude": [BODY["history"][0]]}).json()
    c = cache_client.post("/recommend", json={**BODY, "k": 3}).json()
    assert (cache_lookups(cache_client, "miss"), cache_lookups(cache_client, "hit")) == (3, 0)
    assert len(a["items"]) == len(b["items"]) == 5 and len(c["items"]) == 3


def test_activating_another_version_invalidates_the_cache(
    cache_client: TestClient, admin_headers, v2_archive
):
    assert cache_client.post("/recommend", json=BODY).json()["model_version"] == "v1"
    assert cache_client.post("/recommend", json=BODY).json()["model_version"] == "v1"  # hit
    upload = cache_client.post(
        "/admin/bundles",
        content=v2_archive,
        headers={**admin_headers, "Content-Type": "application/gzip"},
    )
    assert upload.status_code == 201
    assert cache_client.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200

    assert cache_client.post("/recommend", json=BODY).json()["model_version"] == "v2"  # miss
    assert cache_client.post("/recommend", json=BODY).json()["model_version"] == "v2"  # hit
    assert (cache_lookups(cache_client, "miss"), cache_lookups(cache_client, "hit")) == (2, 2)


def test_a_stopped_redis_does_not_fail_requests_and_is_logged_once(
    client_for, make_settings, v1_dir, private_redis: RedisServer, redis_prefix, caplog
):
    client = client_for(
        make_settings(
            bootstrap_bundle=v1_dir,
            redis_url=private_redis.url,
            redis_key_prefix=redis_prefix,
            redis_timeout_s=0.3,
            answer_cache_ttl_s=TTL_S,
        )
    )
    before = client.post("/recommend", json=BODY)
    assert before.status_code == 200
    private_redis.stop()

    with caplog.at_level(logging.WARNING, logger="service.answer_cache"):
        answers = [client.post("/recommend", json=BODY) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all(r.content == before.content for r in answers)  # computed, the same answer
    assert cache_lookups(client, "error") == 3
    warnings = [rec for rec in caplog.records if rec.name == "service.answer_cache"]
    assert len(warnings) == 1
    assert "answer cache unavailable" in warnings[0].getMessage()
