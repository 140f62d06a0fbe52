"""The live catalog through the admin API (/admin/catalog), on the embedded store and on a
real Redis shared by several replicas: availability across swaps, rollbacks, canaries,
restarts and the answer cache; added vectors on another replica; a replica that missed a
message catches up; a Redis that lost its data is written back; bad changes change nothing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.loading import load_model
from service.settings import Settings
from service.store import RedisStore
from tests import factories as f
from tests.conftest import V1
from tests.factories import RedisServer

GZIP = {"Content-Type": "application/gzip"}
HISTORY = ["i3", "i9", "i14"]
PROPAGATION_S = 1.0  # a catalog change reaches every replica within this (issue 20)
eventually = functools.partial(f.poll_until, timeout_s=PROPAGATION_S)


def answer(client: TestClient, history: list[str] = HISTORY, **body: Any) -> list[str]:
    r = client.post("/recommend", json={"history": history, "k": 10, **body})
    assert r.status_code == 200, r.text
    return [item["item_id"] for item in r.json()["items"]]


def post(client: TestClient, path: str, body: Any, headers: dict[str, str]) -> Any:
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def unavailable(client: TestClient, ids: list[str], headers: dict[str, str]) -> Any:
    return post(client, "/admin/catalog/unavailable", {"item_ids": ids}, headers)


def strong_vector(bundle_dir: Any, history: list[str], scale: float = 10.0) -> list[float]:
    """A vector the history's user scores far above every bundle item: its own user vector
    (the bundle's encoder), scaled up."""
    model = load_model(bundle_dir)
    rows = [model.vocab.index(i) for i in history]
    user = model.encode(np.array([[0] * (model.max_len - len(rows)) + rows], dtype=np.int64))[0]
    return (user / np.abs(user).max() * scale).astype(float).tolist()


def test_unavailable_items_leave_every_answer_and_come_back(client, admin_headers):
    top = answer(client)
    out = unavailable(client, top[:3], admin_headers)
    assert out == {"revision": 1, "changed": 3, "unavailable": 3}
    assert not set(top[:3]).intersection(answer(client))
    assert answer(client)[:7] == top[3:]
    listed = client.get("/admin/catalog/unavailable", headers=admin_headers).json()
    assert listed == {"revision": 1, "count": 3, "item_ids": sorted(top[:3])}
    back = post(client, "/admin/catalog/available", {"item_ids": top[:2]}, admin_headers)
    assert back == {"revision": 2, "changed": 2, "unavailable": 1}
    assert answer(client)[:2] == top[:2] and top[2] not in answer(client)
    summary = client.get("/admin/catalog", headers=admin_headers).json()
    assert summary["revision"] == summary["applied_revision"] == 2


def test_availability_holds_across_swap_rollback_and_restart(
    client_for, make_settings, v1_dir, v2_archive, admin_headers, store_settings
):
    settings = make_settings(bootstrap_bundle=v1_dir, **store_settings)
    client = client_for(settings)
    gone = answer(client)[:2]
    unavailable(client, gone, admin_headers)
    client.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    assert client.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    assert f.answered_version(client) == "v2" and not set(gone).intersection(answer(client))
    assert client.post("/admin/rollback", headers=admin_headers).status_code == 200
    assert f.answered_version(client) == "v1" and not set(gone).intersection(answer(client))
    client.__exit__(None, None, None)
    restarted = client_for(settings)  # the same model directory and store
    assert not set(gone).intersection(answer(restarted))


def test_availability_applies_to_the_canary_too(client, v2_archive, admin_headers):
    gone = answer(client)[:3]
    client.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    r = client.post(
        "/admin/activate", json={"version": "v2", "canary_percent": 50}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    unavailable(client, gone, admin_headers)
    versions = set()
    for n in range(40):
        r = client.post("/recommend", json={"history": HISTORY, "k": 10, "user_id": f"u{n}"})
        versions.add(r.json()["model_version"])
        assert not set(gone).intersection(i["item_id"] for i in r.json()["items"])
    assert versions == {"v1", "v2"}


def test_the_answer_cache_never_serves_an_item_made_unavailable(
    client_for, make_settings, v1_dir, redis_url, redis_prefix, admin_headers
):
    client = client_for(
        make_settings(
            bootstrap_bundle=v1_dir,
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
            answer_cache_ttl_s=60,
        )
    )
    top = answer(client)
    assert answer(client) == top  # cached now
    unavailable(client, top[:1], admin_headers)
    assert top[0] not in answer(client)


def test_added_vectors_are_answered_on_another_replica(pair, admin_headers, v1_dir):
    a, b = pair
    vector = strong_vector(v1_dir, HISTORY)
    body = {"items": [{"item_id": "launch-1", "vector": vector}]}
    out = post(a, "/admin/catalog/items/v1", body, admin_headers)
    assert out == {"version": "v1", "revision": 1, "added": 1, "replaced": 0, "total": 1}
    assert answer(a)[0] == "launch-1"
    assert eventually(lambda: answer(b)[0] == "launch-1"), "b did not follow within 1 s"
    listed = b.get("/admin/catalog/items/v1", headers=admin_headers).json()
    assert listed == {"version": "v1", "revision": 1, "count": 1, "item_ids": ["launch-1"]}
    again = post(a, "/admin/catalog/items/v1", body, admin_headers)
    assert (again["added"], again["replaced"], again["total"]) == (0, 1, 1)
    r = a.delete("/admin/catalog/items/v1", headers=admin_headers)
    assert r.status_code == 200 and r.json()["count"] == 0
    assert eventually(lambda: "launch-1" not in answer(b))


def test_unavailability_reaches_the_other_replica_within_a_second(pair, admin_headers):
    a, b = pair
    gone = answer(b)[:3]
    unavailable(a, gone, admin_headers)
    assert eventually(lambda: not set(gone).intersection(answer(b)))
    status = b.get("/admin/status", headers=admin_headers).json()
    assert status["catalog_revision"] == 1


def test_a_replica_that_missed_the_message_catches_up(pair, admin_headers, redis_url, redis_prefix):
    a, b = pair
    gone = answer(b)[:2]
    raw = redis.Redis.from_url(redis_url)
    store = RedisStore(redis_url, prefix=redis_prefix)
    try:
        raw.client_kill_filter(_type="pubsub")  # every subscriber loses its connection ...
        store.set_availability(gone, available=False)  # ... and no message is sent at all
        assert f.poll_until(lambda: not set(gone).intersection(answer(b)))
        assert f.poll_until(lambda: not set(gone).intersection(answer(a)))
    finally:
        store.close()
        raw.close()


@pytest.fixture
def fleet_on_private_redis(
    replica_settings: Callable[..., Settings],
    client_for: Callable[[Settings], TestClient],
    private_redis: RedisServer,
    v1_dir: Any,
) -> Callable[..., TestClient]:
    def start(name: str, **overrides: Any) -> TestClient:
        settings = replica_settings(name, **overrides)
        return client_for(settings.model_copy(update={"redis_url": private_redis.url}))

    return start


def _heals(*clients: TestClient, headers: dict[str, str]) -> int:
    return sum(c.get("/admin/status", headers=headers).json()["heals"] for c in clients)


@pytest.mark.parametrize("loss", ["flushall", "restart-empty"])
def test_a_store_that_lost_its_data_is_written_back(
    fleet_on_private_redis, private_redis, v1_dir, v2_archive, admin_headers, redis_prefix, loss
):
    a = fleet_on_private_redis("a", bootstrap_bundle=v1_dir)
    b = fleet_on_private_redis("b")
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    gone = answer(a)[:2]
    unavailable(a, gone, admin_headers)
    vector = strong_vector(v1_dir, HISTORY)
    post(
        a,
        "/admin/catalog/items/v1",
        {"items": [{"item_id": "n1", "vector": vector}]},
        admin_headers,
    )
    assert eventually(lambda: answer(b)[0] == "n1")
    raw = redis.Redis.from_url(private_redis.url)
    try:
        if loss == "flushall":
            raw.flushall()
        else:
            private_redis.stop()
            private_redis.start()  # the same port, nothing kept
        assert answer(a)[0] == "n1" and answer(b)[0] == "n1"  # serving never stopped
        assert f.poll_until(lambda: _restored(raw))
        assert f.poll_until(lambda: _heals(a, b, headers=admin_headers) == 1)
        assert raw.exists(f"{redis_prefix}:bundle:v1", f"{redis_prefix}:bundle:v2") == 2
        late = fleet_on_private_redis("c")  # no bootstrap: it follows the written-back state
        assert late.get("/readyz").status_code == 200
        assert f.answered_version(late) == "v1"
        assert answer(late)[0] == "n1" and not set(gone).intersection(answer(late))
    finally:
        raw.close()


def _restored(raw: redis.Redis) -> bool:
    keys = {k.decode().rsplit(":", 2)[-1] for k in raw.keys("*")}
    return {"active", "revision", "unavailable"} <= keys


@pytest.mark.parametrize(
    ("path", "body", "status", "problem"),
    [
        ("/admin/catalog/items/v9", {"items": [{"item_id": "n", "vector": [0.0] * 8}]}, 404, "'v9'"),
        ("/admin/catalog/items/v1", {"items": [{"item_id": "n", "vector": [0.0] * 7}]}, 422, "8 values"),
        ("/admin/catalog/items/v1", {"items": [{"item_id": "n", "vector": [1.0] * 8}, {"item_id": "m", "vector": [1.0] * 9}]}, 422, "different lengths"),
        ("/admin/catalog/items/v1", {"items": []}, 422, "at least 1"),
        ("/admin/catalog/unavailable", {"item_ids": []}, 422, "at least 1"),
        ("/admin/catalog/unavailable", {"item_ids": ["x" * 300]}, 422, "at most 256"),
        ("/admin/catalog/unavailable", {"item_ids": "i1"}, 422, "valid list"),
        ("/admin/catalog/unavailable", {"item_ids": [f"i{n}" for n in range(101)]}, 422, "CATALOG_MAX_IDS"),
    ],
)  # fmt: skip
def test_bad_changes_are_refused_naming_the_problem_and_change_nothing(
    client_for, make_settings, v1_dir, admin_headers, path, body, status, problem
):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, catalog_max_ids=100))
    before = answer(client)
    r = client.post(path, json=body, headers=admin_headers)
    assert r.status_code == status, r.text
    assert problem in r.text
    summary = client.get("/admin/catalog", headers=admin_headers).json()
    assert summary["revision"] == 0 and answer(client) == before


def test_a_foldin_file_is_accepted_as_the_body_when_its_version_matches(
    client, admin_headers, v1_dir
):
    item = {"item_id": "n", "vector": strong_vector(v1_dir, HISTORY)}
    ok = post(client, "/admin/catalog/items/v1", {"version": "v1", "items": [item]}, admin_headers)
    assert ok["added"] == 1
    body = {"version": "v2", "items": [item]}
    r = client.post("/admin/catalog/items/v1", json=body, headers=admin_headers)
    assert r.status_code == 422 and "of version 'v2', the path names 'v1'" in r.text


def test_a_vector_that_is_not_finite_is_refused(client, admin_headers):
    body = '{"items": [{"item_id": "n", "vector": [NaN, 0, 0, 0, 0, 0, 0, 0]}]}'
    headers = {**admin_headers, "Content-Type": "application/json"}
    r = client.post("/admin/catalog/items/v1", content=body, headers=headers)
    assert r.status_code == 422 and "'n' is not finite" in r.text
    assert client.get("/admin/catalog", headers=admin_headers).json()["revision"] == 0


def test_ten_million_ids_in_one_call_are_refused_before_they_are_read(client, admin_headers):
    ids = ",".join(['"i1"'] * 10_000_000)
    headers = {**admin_headers, "Content-Type": "application/json"}
    r = client.post(
        "/admin/catalog/unavailable", content=f'{{"item_ids": [{ids}]}}', headers=headers
    )
    assert r.status_code == 413 and "limit" in r.text
    assert client.get("/admin/catalog", headers=admin_headers).json()["revision"] == 0


def test_an_added_item_uses_the_bundle_vector_space(embedded_client, admin_headers, v1_dir):
    """The stored vector is the encoded row of the bundle's own encoding (int8 with scale)."""
    row = np.asarray(strong_vector(v1_dir, HISTORY, scale=1.0))
    body = {"items": [{"item_id": "n", "vector": row.tolist()}]}
    post(embedded_client, "/admin/catalog/items/v1", body, admin_headers)
    layer = embedded_client.app.state.registry.store.get_catalog()  # type: ignore[attr-defined]
    stored = layer.vectors_of("v1")["n"]
    assert len(stored) == 4 + V1.dim  # float32 scale, then one int8 per dimension


def test_a_replica_that_cannot_reach_redis_keeps_its_last_catalog(
    stoppable_redis_client, private_redis, admin_headers
):
    client = stoppable_redis_client
    gone = answer(client)[:2]
    unavailable(client, gone, admin_headers)
    private_redis.stop()
    for _ in range(3):
        assert not set(gone).intersection(answer(client))
    r = client.post("/admin/catalog/available", json={"item_ids": gone}, headers=admin_headers)
    assert r.status_code == 503 and "store unavailable" in r.text
    assert not set(gone).intersection(answer(client))
