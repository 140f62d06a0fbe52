"""Several replicas (app instances, each with its own model directory) sharing one real
Redis: a swap on one reaches the others, bundles travel through Redis, admin operations are
serialized fleet-wide, a canary splits traffic the same way everywhere."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service import registry as registry_module
from service.main import create_app
from tests import factories as f
from tests.conftest import V2

GZIP = {"Content-Type": "application/gzip"}
# How long a correctness wait may take before it counts as never: generous, because a busy
# 2-core machine can stall for seconds. How fast a swap reaches the fleet is bench-swap's
# measure (benchmarks/swap.py), not these tests'.
WAIT_S = 30.0

eventually = functools.partial(f.poll_until, timeout_s=WAIT_S)


def status(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    r = client.get("/admin/status", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body.pop("pid") == os.getpid()  # in-process apps: this test's process
    return body


def test_a_replica_that_starts_with_nothing_serves_the_fleets_active_version(pair):
    a, b = pair
    assert f.answered_version(a) == "v1"
    assert f.answered_version(b) == "v1"


def test_activate_on_one_replica_reaches_the_other(pair, admin_headers, v2_archive):
    a, b = pair
    assert (
        a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP}).status_code
        == 201
    )
    assert a.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    assert f.answered_version(a) == "v2"
    assert eventually(lambda: f.answered_version(b) == "v2"), "b did not follow"
    # b never had v2 uploaded: it installed it from the fleet's archive.
    listed = b.get("/admin/bundles", headers=admin_headers).json()
    assert listed["active"] == "v2"
    assert status(b, admin_headers) == {
        "replica": "b",
        "serving": "v2",
        "canary": None,
        "canary_percent": 0.0,
        "standby": "v1",
        "prepared": None,  # dropped when v2 became the serving model
        "fleet_active": "v2",
        "fleet_canary": None,
        "error": None,
        "subscriber_connected": True,
        "catalog_revision": 0,
        "heals": 0,
    }


def test_the_other_replica_loads_the_new_version_while_the_activating_one_does(
    pair, admin_headers, v2_archive, v3_archive, tmp_path, monkeypatch
):
    a, b = pair
    for archive in (v2_archive, v3_archive):  # v3 last: a holds v2 on disk only
        a.post("/admin/bundles", content=archive, headers={**admin_headers, **GZIP})
    assert eventually(lambda: status(b, admin_headers)["prepared"] == "v3")  # as a: v2 unloaded
    starts: list[tuple[Path, float]] = []
    b_loading = threading.Event()
    real = registry_module.load_model

    def spy(path: Path, options: Any = None) -> Any:
        starts.append((path, time.monotonic()))
        if path.is_relative_to(tmp_path / "models-b"):
            b_loading.set()
        else:  # a's load lasts until b has started its own (never, if b waits for a)
            b_loading.wait(timeout=WAIT_S)
        return real(path, options)

    monkeypatch.setattr(registry_module, "load_model", spy)
    assert a.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    answered = time.monotonic()
    assert eventually(lambda: f.answered_version(b) == "v2")
    on_b = [t for path, t in starts if path.is_relative_to(tmp_path / "models-b")]
    assert len(on_b) == 1, starts  # prepared once, not loaded again to follow
    assert on_b[0] < answered  # while a was still activating


def test_an_upload_is_loaded_ahead_on_every_replica_so_activating_it_loads_nothing(
    pair, admin_headers, v2_archive, monkeypatch
):
    a, b = pair
    r = a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    assert r.status_code == 201, r.text
    assert status(a, admin_headers)["prepared"] == "v2"  # loaded by the upload's validation
    assert eventually(lambda: status(b, admin_headers)["prepared"] == "v2")  # announced
    assert f.answered_version(b) == "v1"  # loaded ahead, not serving
    loads: list[Path] = []
    real = registry_module.load_model
    monkeypatch.setattr(
        registry_module,
        "load_model",
        lambda path, options=None: loads.append(path) or real(path, options),
    )
    assert a.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    assert eventually(lambda: f.answered_version(b) == "v2")
    assert loads == []  # a reference swap on both replicas
    assert status(b, admin_headers)["prepared"] is None
    assert status(b, admin_headers)["standby"] == "v1"


def test_rollback_on_either_replica_reaches_both(pair, admin_headers, v2_archive):
    a, b = pair
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    a.post("/admin/bundles/v2/activate", headers=admin_headers)
    assert eventually(lambda: f.answered_version(b) == "v2")
    r = b.post("/admin/rollback", headers=admin_headers)
    assert r.status_code == 200 and r.json()["version"] == "v1"
    assert f.answered_version(b) == "v1"
    assert eventually(lambda: f.answered_version(a) == "v1")
    # Both kept v2 loaded: swapping forward again is a reference swap on each replica.
    assert status(a, admin_headers)["standby"] == status(b, admin_headers)["standby"] == "v2"


def test_a_restarted_replica_comes_up_on_the_active_version(
    replica, replica_settings, v1_dir, admin_headers, v2_archive
):
    a = replica("a", bootstrap_bundle=v1_dir)
    with TestClient(create_app(replica_settings("b"))) as b:
        assert f.answered_version(b) == "v1"
    # b is down while v2 is uploaded and activated: it hears no event.
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    assert a.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    with TestClient(create_app(replica_settings("b"))) as b:
        assert f.answered_version(b) == "v2"
    assert f.answered_version(replica("c")) == "v2"  # a new replica, empty model directory


def test_a_replica_installs_and_follows_the_fleets_version_without_its_own_gates(
    replica, admin_headers, tmp_path
):
    """The gates ran on the replica that took the admin call; a follower with stricter gate
    settings installs the version from the fleet's archive and serves it all the same."""
    base = f.make_bundle_dir(tmp_path / "base", f.BundleSpec(version="base", ndcg=0.5))
    low = f.make_bundle_archive(tmp_path, f.BundleSpec(version="low", ndcg=0.1))
    a = replica("a", bootstrap_bundle=base)
    b = replica("b", gate_max_ndcg_drop=0.05)  # would refuse low (0.1 < 0.5 * 0.95) itself
    assert f.answered_version(b) == "base"
    assert (
        a.post("/admin/bundles", content=low, headers={**admin_headers, **GZIP}).status_code == 201
    )
    assert a.post("/admin/bundles/low/activate", headers=admin_headers).status_code == 200
    assert eventually(lambda: f.answered_version(b) == "low"), "b did not follow"
    assert status(b, admin_headers)["error"] is None
    # b's own admin calls stay gated: back to base passes, low again is refused there.
    assert b.post("/admin/bundles/base/activate", headers=admin_headers).status_code == 200
    r = b.post("/admin/bundles/low/activate", headers=admin_headers)
    assert r.status_code == 422 and "accuracy gate" in r.json()["detail"]


def corrupt_golden_archive(tmp_path: Path) -> bytes:
    d = f.make_bundle_dir(tmp_path / "corrupt-v2", V2)
    f.corrupt_golden(d)
    return f.repack(d)


@pytest.mark.parametrize("damage", ["fails_validation", "sha256_mismatch"])
def test_a_replica_that_cannot_load_the_new_version_keeps_serving_and_reports_it(
    replica, v1_dir, admin_headers, v2_archive, redis_url, redis_prefix, tmp_path, damage
):
    a = replica("a", bootstrap_bundle=v1_dir)
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    key = f"{redis_prefix}:bundle:v2"
    client = redis.Redis.from_url(redis_url)
    if damage == "fails_validation":  # a self-consistent archive of a bad bundle
        bad = corrupt_golden_archive(tmp_path)
        client.hset(key, mapping={"archive": bad, "sha256": hashlib.sha256(bad).hexdigest()})
        reason = "golden outputs"
    else:  # bytes changed after they were stored
        client.hset(key, "archive", b"garbage")
        reason = "does not match its sha256"
    client.close()
    b = replica("b")  # started after the upload: it did not load v2 ahead from the good copy
    assert f.answered_version(b) == "v1"

    assert a.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    assert f.answered_version(a) == "v2"
    assert eventually(lambda: status(b, admin_headers)["error"] is not None)
    s = status(b, admin_headers)
    assert s["serving"] == "v1" and s["fleet_active"] == "v2"
    assert "'v2'" in s["error"] and reason in s["error"]
    assert f.answered_version(b) == "v1"  # never crashed, still answering
    ready = b.get("/readyz")
    assert ready.status_code == 200  # it answers: degraded, not out of the rotation
    assert ready.json()["status"] == "degraded"
    assert ready.json()["model_version"] == "v1" and reason in ready.json()["fleet_error"]
    assert not (Path(b.app.state.settings.model_dir) / "v2").exists()  # type: ignore[attr-defined]


def test_concurrent_activations_from_both_replicas_end_on_one_requested_version(
    pair, admin_headers, v2_archive, v3_archive
):
    a, b = pair
    assert (
        a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP}).status_code
        == 201
    )
    assert (
        b.post("/admin/bundles", content=v3_archive, headers={**admin_headers, **GZIP}).status_code
        == 201
    )
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            r = client.post("/recommend", json={"history": ["i3"], "k": 2})
            answers.append((r.status_code, r.json().get("model_version", r.text)))

    with ThreadPoolExecutor(max_workers=6) as pool:
        readers = [pool.submit(hammer, c) for c in (a, b)]
        for _ in range(3):
            calls = [
                pool.submit(a.post, "/admin/bundles/v2/activate", headers=admin_headers),
                pool.submit(b.post, "/admin/bundles/v3/activate", headers=admin_headers),
                pool.submit(
                    a.post, "/admin/activate", json={"version": "v3"}, headers=admin_headers
                ),
                pool.submit(
                    b.post, "/admin/activate", json={"version": "v2"}, headers=admin_headers
                ),
            ]
            codes = [c.result().status_code for c in calls]
            assert set(codes) <= {200, 409}, codes
        stop.set()
        for r in readers:
            r.result()

    assert eventually(
        lambda: (
            f.answered_version(a)
            == f.answered_version(b)
            == status(a, admin_headers)["fleet_active"]
        )
    )
    assert f.answered_version(a) in {"v2", "v3"}
    assert status(b, admin_headers)["error"] is None
    assert {code for code, _ in answers} == {200}
    assert {v for _, v in answers} <= {"v1", "v2", "v3"}


def test_uploading_while_a_swap_is_in_flight_is_safe(pair, admin_headers, v2_archive, v3_archive):
    a, b = pair
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    with ThreadPoolExecutor(max_workers=2) as pool:
        swap = pool.submit(a.post, "/admin/bundles/v2/activate", headers=admin_headers)
        up = pool.submit(
            b.post, "/admin/bundles", content=v3_archive, headers={**admin_headers, **GZIP}
        )
        assert swap.result().status_code == 200
        assert up.result().status_code == 201
    assert eventually(lambda: f.answered_version(b) == "v2")
    r = a.post("/admin/bundles/v3/activate", headers=admin_headers)  # uploaded to b only
    assert r.status_code == 200, r.text
    assert eventually(lambda: f.answered_version(b) == "v3")


def test_a_version_name_holds_one_archive_fleet_wide(
    pair, replica, admin_headers, v2_archive, tmp_path
):
    a, b = pair
    r = a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    assert r.status_code == 201
    # b installed it from the fleet when a announced it: it is there already.
    assert eventually(lambda: status(b, admin_headers)["prepared"] == "v2")
    r = b.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    assert r.status_code == 409 and "already installed" in r.json()["detail"], r.text
    # The same archive uploaded to a replica that has no v2 yet is fine ...
    c = replica("c")
    r = c.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    assert r.status_code == 201
    # ... another archive named v2 is not.
    d = replica("d")
    other = f.make_bundle_archive(tmp_path, V2, seed=7)
    r = d.post("/admin/bundles", content=other, headers={**admin_headers, **GZIP})
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == "model version 'v2' exists in the fleet with another archive"
    assert [
        v["version"] for v in d.get("/admin/bundles", headers=admin_headers).json()["versions"]
    ] == ["v1"]


def test_an_admin_call_while_another_holds_the_fleet_lock_is_409(
    replica, v1_dir, admin_headers, redis_url, redis_prefix
):
    a = replica("a", bootstrap_bundle=v1_dir, fleet_lock_wait_s=0.2)
    client = redis.Redis.from_url(redis_url)
    client.set(f"{redis_prefix}:admin-lock", "activate v9 on replica z|token", px=5000)
    r = a.post("/admin/rollback", headers=admin_headers)
    client.close()
    assert r.status_code == 409
    assert r.json()["detail"] == (
        "another admin operation is in progress (activate v9 on replica z); "
        "nothing was changed, try again"
    )
    assert f.answered_version(a) == "v1"


# --- canary -------------------------------------------------------------------------------


def start_canary(client: TestClient, headers: dict[str, str], percent: float) -> dict[str, Any]:
    r = client.post(
        "/admin/activate", json={"version": "v2", "canary_percent": percent}, headers=headers
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_canary_splits_traffic_by_user_id_the_same_way_on_every_replica(
    pair, admin_headers, v2_archive
):
    a, b = pair
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    body = start_canary(a, admin_headers, 10)
    assert body["serving"] == "v1" and body["canary"] == "v2" and body["canary_percent"] == 10
    assert body["fleet_active"] == "v1" and body["fleet_canary"] == "v2"
    assert a.get("/readyz").json()["canary_version"] == "v2"
    assert eventually(lambda: status(b, admin_headers)["canary"] == "v2")

    users = [f"user-{i}" for i in range(1000)]
    on_a = {u: f.answered_version(a, u) for u in users}
    share = sum(v == "v2" for v in on_a.values()) / len(users)
    assert 0.06 <= share <= 0.14, share
    assert set(on_a.values()) == {"v1", "v2"}
    sample = users[::10]
    assert {u: f.answered_version(a, u) for u in sample} == {u: on_a[u] for u in sample}  # sticky
    assert {u: f.answered_version(b, u) for u in sample} == {
        u: on_a[u] for u in sample
    }  # same split
    anonymous = {f.answered_version(b) for _ in range(100)}
    assert anonymous == {"v1", "v2"}  # random without a user_id (P(miss) = 0.9^100)


def test_promoting_a_canary_makes_it_active_everywhere(pair, admin_headers, v2_archive):
    a, b = pair
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    start_canary(a, admin_headers, 50)
    assert eventually(lambda: status(b, admin_headers)["canary"] == "v2")
    r = b.post("/admin/canary/promote", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["serving"] == "v2" and r.json()["canary"] is None
    for client in (a, b):
        assert eventually(lambda c=client: status(c, admin_headers)["serving"] == "v2")
        assert {f.answered_version(client, f"u{i}") for i in range(50)} == {"v2"}
    assert a.post("/admin/rollback", headers=admin_headers).json()["version"] == "v1"


def test_aborting_a_canary_returns_all_traffic_to_the_active_version(
    pair, admin_headers, v2_archive
):
    a, b = pair
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    start_canary(a, admin_headers, 50)
    assert eventually(lambda: status(b, admin_headers)["canary"] == "v2")
    r = a.post("/admin/canary/abort", headers=admin_headers)
    assert r.status_code == 200 and r.json()["canary"] is None
    for client in (a, b):
        assert eventually(lambda c=client: status(c, admin_headers)["canary"] is None)
        assert {f.answered_version(client, f"u{i}") for i in range(50)} == {"v1"}
    r = a.post("/admin/canary/abort", headers=admin_headers)
    assert r.status_code == 409 and "no canary is running" in r.json()["detail"]
    assert a.post("/admin/canary/promote", headers=admin_headers).status_code == 409


def test_a_replica_restarted_during_a_canary_comes_up_with_the_same_split(
    pair, replica, admin_headers, v2_archive
):
    a, _ = pair
    a.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    start_canary(a, admin_headers, 30)
    c = replica("c")
    users = [f"u{i}" for i in range(100)]
    assert [f.answered_version(c, u) for u in users] == [f.answered_version(a, u) for u in users]


def test_the_active_version_cannot_be_its_own_canary(embedded_client, admin_headers):
    r = embedded_client.post(
        "/admin/activate", json={"version": "v1", "canary_percent": 10}, headers=admin_headers
    )
    assert r.status_code == 409
    assert "'v1' is the active version" in r.json()["detail"]


@pytest.mark.parametrize("percent", [0, 100, -5, 150])
def test_canary_percent_outside_0_100_is_422(embedded_client, admin_headers, percent):
    r = embedded_client.post(
        "/admin/activate", json={"version": "v2", "canary_percent": percent}, headers=admin_headers
    )
    assert r.status_code == 422


def test_canary_works_on_the_embedded_store_too(embedded_client, admin_headers, v2_archive):
    c = embedded_client
    c.post("/admin/bundles", content=v2_archive, headers={**admin_headers, **GZIP})
    body = start_canary(c, admin_headers, 20)
    assert body["replica"] and body["subscriber_connected"] is None
    versions = [f.answered_version(c, f"u{i}") for i in range(300)]
    assert 0.12 <= versions.count("v2") / 300 <= 0.28
    assert c.post("/admin/canary/promote", headers=admin_headers).json()["serving"] == "v2"
    assert f.answered_version(c, "u1") == "v2"


def test_the_subscriber_runs_with_the_lifespan_and_stops_at_shutdown(replica_settings, v1_dir):
    app = create_app(replica_settings("a", bootstrap_bundle=v1_dir))
    with TestClient(app):
        fleet = app.state.registry.fleet
        assert eventually(lambda: fleet.connected is True)
        assert any(t.name == "fleet-subscriber" for t in threading.enumerate())
    assert fleet.connected is False
    assert not any(t.name == "fleet-subscriber" for t in threading.enumerate())
