from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from bundle import encode_items
from service.errors import StoreUnavailable
from service.store import (
    ACTIVE_FILE,
    ActiveState,
    EmbeddedStore,
    ItemMatrix,
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


def _matrix(encoding: str, rows: int = 7, dim: int = 5) -> ItemMatrix:
    m = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    stored, scales = encode_items(m, encoding)  # type: ignore[arg-type]
    return ItemMatrix(items=stored, scales=scales)


@pytest.mark.parametrize("encoding", ["int8", "fp16", "fp32"])
def test_item_matrix_round_trips_exactly(store: Store, encoding: str):
    original = _matrix(encoding)
    store.put_items("v1", original)
    got = store.get_items("v1")
    assert got is not None
    assert got.items.dtype == original.items.dtype
    np.testing.assert_array_equal(got.items, original.items)
    if original.scales is None:
        assert got.scales is None
    else:
        assert got.scales is not None
        np.testing.assert_array_equal(got.scales, original.scales)


def test_items_are_scoped_by_version(store: Store):
    store.put_items("v1", _matrix("int8"))
    assert store.has_items("v1")
    assert not store.has_items("v2")
    assert store.get_items("v2") is None
    store.delete_items("v1")
    assert not store.has_items("v1")


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


def test_redis_store_shares_state_and_items_between_replicas(redis_url: str, redis_prefix: str):
    a = RedisStore(redis_url, prefix=redis_prefix)
    b = RedisStore(redis_url, prefix=redis_prefix)
    try:
        a.set_active("v7", previous="v6")
        a.put_items("v7", _matrix("int8"))
        assert b.get_state() == ActiveState(active="v7", previous="v6")
        got = b.get_items("v7")
        assert got is not None and got.items.shape == (7, 5)
    finally:
        a.close()
        b.close()


def test_redis_store_uses_version_scoped_keys(redis_url: str, redis_prefix: str):
    store = RedisStore(redis_url, prefix=redis_prefix)
    raw = redis.Redis.from_url(redis_url)
    try:
        store.put_items("v1", _matrix("int8"))
        store.set_active("v1", previous=None)
        keys = {k.decode() for k in raw.keys(f"{redis_prefix}:*")}
        assert keys == {f"{redis_prefix}:items:v1", f"{redis_prefix}:active"}
        assert raw.type(f"{redis_prefix}:items:v1") == b"hash"
    finally:
        store.close()
        raw.close()


def test_redis_store_raises_store_unavailable_when_redis_is_down():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        assert not store.ping()
        with pytest.raises(StoreUnavailable):
            store.get_state()
        with pytest.raises(StoreUnavailable):
            store.set_active("v1", previous=None)
        with pytest.raises(StoreUnavailable):
            store.get_items("v1")
        with pytest.raises(StoreUnavailable):
            store.put_items("v1", _matrix("fp16"))
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
