from __future__ import annotations

from fastapi.testclient import TestClient


def test_healthz_answers_while_the_process_is_alive(client_for, make_settings):
    client = client_for(make_settings())  # even with no model
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_is_200_with_version_and_store_state_when_a_model_is_loaded(
    client: TestClient, store_kind: str
):
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body.pop("replica")  # a random id per process unless REPLICA_ID names it
    assert body == {
        "status": "ready",
        "model_version": "v1",
        "canary_version": None,
        "store": {"backend": store_kind, "ok": True},
        "fleet_error": None,
        "catalog_revision": 0,
    }


def test_readyz_is_503_without_a_model(client_for, make_settings):
    client = client_for(make_settings())
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "not_ready"
    assert r.json()["model_version"] is None


def test_when_redis_goes_down_answers_continue_from_memory_and_readyz_says_degraded(
    stoppable_redis_client, private_redis
):
    client = stoppable_redis_client
    assert client.get("/readyz").json()["status"] == "ready"
    private_redis.stop()

    r = client.post("/recommend", json={"history": ["i1", "i2"], "k": 5})
    assert r.status_code == 200
    assert r.json()["model_version"] == "v1"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["store"] == {"backend": "redis", "ok": False}


def test_admin_swap_is_refused_with_503_while_redis_is_down(
    stoppable_redis_client, private_redis, admin_headers, v2_archive
):
    client = stoppable_redis_client
    r = client.post(
        "/admin/bundles",
        content=v2_archive,
        headers={**admin_headers, "Content-Type": "application/gzip"},
    )
    assert r.status_code == 201
    private_redis.stop()
    r = client.post("/admin/bundles/v2/activate", headers=admin_headers)
    assert r.status_code == 503
    assert r.json()["detail"].startswith("store unavailable")
    assert client.post("/recommend", json={"history": ["i1"]}).json()["model_version"] == "v1"
