from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.catalog import CatalogLayer
from service.errors import StoreUnavailable
from service.store import (
    ACTIVE_FILE,
    ActiveState,
    EmbeddedStore,
    RedisStore,
    Store,
    open_store,
)
from tests.factories import free_port


@pytest.fixture
def store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest, redis_prefix: str
) -> Iterator[Store]:
    s: Store
    if store_kind == "embedded":
        s = EmbeddedStore(tmp_path)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=redis_prefix)
    yield s
    s.close()


def test_catalog_starts_empty_at_revision_zero(store: Store):
    assert store.get_catalog() == CatalogLayer()
    assert store.get_state().catalog_revision is None
    assert store.get_state().empty


def test_availability_changes_count_what_changed_and_bump_the_revision(store: Store):
    changed, rev1 = store.set_availability(["a", "b", "a"], available=False)
    assert (changed, rev1) == (2, 1)
    changed, rev2 = store.set_availability(["b", "c"], available=False)
    assert (changed, rev2) == (1, 2)
    changed, rev3 = store.set_availability(["a", "zz"], available=True)
    assert (changed, rev3) == (1, 3)
    layer = store.get_catalog()
    assert layer.revision == 3 and layer.unavailable == {"b", "c"}
    assert store.get_state().catalog_revision == 3
    assert not store.get_state().empty


def test_item_vectors_merge_per_version_and_round_trip_exactly(store: Store):
    store.put_item_vectors("v1", {"x": b"\x01\x02", "y": b"\x03\x04"})
    rev = store.put_item_vectors("v1", {"y": b"\x05\x06", "z": b"\x00\xff"})
    store.put_item_vectors("v2", {"x": b"\x09"})
    layer = store.get_catalog()
    assert layer.vectors_of("v1") == {"x": b"\x01\x02", "y": b"\x05\x06", "z": b"\x00\xff"}
    assert layer.vectors_of("v2") == {"x": b"\x09"}
    assert layer.revision == rev + 1
    store.delete_item_vectors("v1")
    assert store.get_catalog().vectors_of("v1") == {}
    assert store.get_catalog().vectors_of("v2") == {"x": b"\x09"}


def test_restore_writes_back_into_an_empty_store_only(store: Store):
    layer = CatalogLayer(revision=7, unavailable=frozenset({"a"}), items={"v1": {"x": b"\x01"}})
    record = ActiveState(active="v2", previous="v1", canary="v3", canary_percent=5.0)
    assert store.restore(record, layer)
    state = store.get_state()
    assert (state.active, state.previous, state.canary, state.canary_percent) == (
        "v2",
        "v1",
        "v3",
        5.0,
    )
    assert store.get_catalog() == layer
    assert not store.restore(ActiveState(active="v9"), CatalogLayer())  # not empty any more
    assert store.get_state().active == "v2"


def test_active_state_starts_empty_and_round_trips(store: Store):
    assert store.get_state() == ActiveState()
    store.set_active("v1", previous=None)
    assert store.get_state() == ActiveState(active="v1", previous=None)
    store.set_active("v2", previous="v1")
    assert store.get_state() == ActiveState(active="v2", previous="v1")
    store.set_active("v3", previous=None)
    assert store.get_state().previous is None


def test_a_canary_is_stored_with_its_share_and_ended_by_activating(store: Store):
    store.set_active("v1", previous=None)
    store.set_canary("v2", percent=12.5)
    assert store.get_state() == ActiveState(active="v1", canary="v2", canary_percent=12.5)
    store.set_canary(None)
    assert store.get_state() == ActiveState(active="v1")
    store.set_canary("v2", percent=50)
    store.set_active("v2", previous="v1")  # one write: active, previous, no canary
    assert store.get_state() == ActiveState(active="v2", previous="v1")


def test_store_ping_is_true_when_reachable(store: Store):
    assert store.ping()


def test_embedded_store_persists_the_active_version_across_restarts(tmp_path: Path):
    EmbeddedStore(tmp_path).set_active("v2", previous="v1")
    assert (tmp_path / ACTIVE_FILE).is_file()
    assert EmbeddedStore(tmp_path).get_state() == ActiveState(active="v2", previous="v1")


def test_embedded_store_reports_an_unreadable_state_file(tmp_path: Path):
    (tmp_path / ACTIVE_FILE).write_text("not json")
    with pytest.raises(StoreUnavailable, match=ACTIVE_FILE):
        EmbeddedStore(tmp_path).get_state()


def test_redis_store_shares_state_and_catalog_between_replicas(redis_url: str, redis_prefix: str):
    a = RedisStore(redis_url, prefix=redis_prefix)
    b = RedisStore(redis_url, prefix=redis_prefix)
    try:
        a.set_active("v7", previous="v6")
        a.set_availability(["gone"], available=False)
        a.put_item_vectors("v7", {"new": b"\x01"})
        assert b.get_state() == ActiveState(active="v7", previous="v6", catalog_revision=2)
        assert b.get_catalog() == CatalogLayer(2, frozenset({"gone"}), {"v7": {"new": b"\x01"}})
    finally:
        a.close()
        b.close()


def test_redis_store_keys(redis_url: str, redis_prefix: str):
    store = RedisStore(redis_url, prefix=redis_prefix)
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.hset(f"{redis_prefix}:items:old", "items", b"x")  # what earlier releases wrote
        assert store.delete_legacy_keys() == 1
        store.set_active("v1", previous=None)
        store.set_availability(["a"], available=False)
        store.put_item_vectors("v1", {"n": b"\x01"})
        keys = {k.decode() for k in raw.keys(f"{redis_prefix}:*")}
        assert keys == {
            f"{redis_prefix}:active",
            f"{redis_prefix}:catalog:revision",
            f"{redis_prefix}:catalog:unavailable",
            f"{redis_prefix}:catalog:versions",
            f"{redis_prefix}:catalog:items:v1",
        }
        assert raw.type(f"{redis_prefix}:catalog:unavailable") == b"set"
        assert raw.type(f"{redis_prefix}:catalog:items:v1") == b"hash"
    finally:
        store.close()
        raw.close()


def test_embedded_store_persists_the_catalog_across_restarts(tmp_path: Path):
    EmbeddedStore(tmp_path).set_availability(["a"], available=False)
    EmbeddedStore(tmp_path).put_item_vectors("v1", {"n": b"\x00\x01"})
    assert EmbeddedStore(tmp_path).get_catalog() == CatalogLayer(
        2, frozenset({"a"}), {"v1": {"n": b"\x00\x01"}}
    )


def test_redis_store_raises_store_unavailable_when_redis_is_down():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        assert not store.ping()
        with pytest.raises(StoreUnavailable):
            store.get_state()
        with pytest.raises(StoreUnavailable):
            store.set_active("v1", previous=None)
        with pytest.raises(StoreUnavailable):
            store.get_catalog()
        with pytest.raises(StoreUnavailable):
            store.set_availability(["a"], available=False)
    finally:
        store.close()


def test_open_store_picks_redis_only_when_a_url_is_given(tmp_path: Path, redis_url: str):
    embedded = open_store(redis_url=None, state_dir=tmp_path)
    remote = open_store(redis_url=redis_url, state_dir=tmp_path)
    try:
        assert embedded.backend == "embedded"
        assert remote.backend == "redis"
    finally:
        embedded.close()
        remote.close()
