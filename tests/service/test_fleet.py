"""service.fleet on a real Redis: the admin lock, bundle distribution, the subscriber."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from service.errors import AdminBusy, InvalidBundle, VersionExists
from service.fleet import LocalFleet, RedisFleet
from tests.factories import RedisServer, poll_until


@pytest.fixture
def make_fleet(redis_url: str, redis_prefix: str) -> Iterator[Callable[..., RedisFleet]]:
    made: list[RedisFleet] = []

    def make(url: str = redis_url, **kwargs: object) -> RedisFleet:
        fleet = RedisFleet(url, prefix=redis_prefix, **kwargs)  # type: ignore[arg-type]
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop()


def test_the_admin_lock_is_exclusive_and_the_waiter_gets_admin_busy_naming_the_holder(
    make_fleet,
):
    a = make_fleet(replica_id="a", lock_wait_s=0.2)
    b = make_fleet(replica_id="b", lock_wait_s=0.2)
    with a.lock("activate v2"), pytest.raises(AdminBusy) as err, b.lock("activate v3"):
        pass
    assert "activate v2 on replica a" in str(err.value)
    with b.lock("activate v3"):  # released: free again
        pass


def test_a_waiter_gets_the_lock_once_it_is_released(make_fleet):
    a = make_fleet(replica_id="a")
    b = make_fleet(replica_id="b", lock_wait_s=5)
    order: list[str] = []
    held = threading.Event()

    def hold() -> None:
        with a.lock("activate v2"):
            held.set()
            time.sleep(0.3)
            order.append("a")

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    with b.lock("activate v3"):
        order.append("b")
    t.join()
    assert order == ["a", "b"]


def test_an_expired_lock_taken_by_another_is_not_released_by_its_former_holder(
    make_fleet, redis_url
):
    a = make_fleet(replica_id="a", lock_ttl_s=0.1)
    client = redis.Redis.from_url(redis_url)
    with a.lock("activate v2"):
        time.sleep(0.2)  # a's lock expired ...
        assert client.set(a.lock_key, "someone else", nx=True)  # ... and was taken
    assert client.get(a.lock_key) == b"someone else"  # compare-and-delete left it alone
    client.close()


def test_an_archive_is_shared_once_and_fetched_verified(make_fleet, redis_url):
    a, b = make_fleet(), make_fleet()
    a.share_archive("v2", lambda: b"archive bytes")
    assert b.has_archive("v2")
    assert b.fetch_archive("v2") == b"archive bytes"
    a.share_archive("v2", lambda: b"archive bytes")  # the same archive again: fine
    with pytest.raises(VersionExists):
        b.share_archive("v2", lambda: b"other bytes")
    assert b.fetch_archive("v3") is None


def test_a_fetched_archive_that_does_not_match_its_sha256_is_refused(make_fleet, redis_url):
    fleet = make_fleet()
    client = redis.Redis.from_url(redis_url)
    client.hset(
        fleet.bundle_key("v2"),
        mapping={"archive": b"tampered", "sha256": hashlib.sha256(b"original").hexdigest()},
    )
    client.close()
    with pytest.raises(InvalidBundle, match="does not match its sha256"):
        fleet.fetch_archive("v2")


def test_the_subscriber_hears_other_replicas_but_not_itself(make_fleet, redis_url):
    a, b = make_fleet(replica_id="a"), make_fleet(replica_id="b")
    calls: list[str] = []
    b.start(on_change=lambda: calls.append("change"))
    assert poll_until(lambda: calls == ["change"])  # the initial re-read
    b.publish("activate", "v9")  # its own event: already applied
    a.publish("activate", "v2")
    assert poll_until(lambda: len(calls) == 2)
    time.sleep(0.2)
    assert calls == ["change", "change"]


def test_a_prepare_event_calls_on_prepare_with_the_version_not_on_change(make_fleet):
    a, b = make_fleet(replica_id="a"), make_fleet(replica_id="b")
    calls: list[str] = []
    b.start(on_change=lambda: calls.append("change"), on_prepare=calls.append)
    assert poll_until(lambda: calls == ["change"])
    a.publish("prepare", "v2")
    a.publish("activate", "v2")
    assert poll_until(lambda: len(calls) == 3)
    time.sleep(0.2)
    assert calls == ["change", "v2", "change"]


def test_events_are_json_naming_event_version_and_origin(make_fleet, redis_url):
    a = make_fleet(replica_id="a")
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(a.channel)
    a.publish("rollback", "v1")
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
    assert message is not None
    assert json.loads(message["data"]) == {"event": "rollback", "version": "v1", "origin": "a"}
    pubsub.close()
    client.close()


def test_the_subscriber_reconnects_after_an_outage_and_re_reads_the_state(
    make_fleet, private_redis: RedisServer
):
    fleet = make_fleet(private_redis.url, timeout_s=0.3)
    calls: list[str] = []
    fleet.start(on_change=lambda: calls.append("change"))
    assert poll_until(lambda: fleet.connected is True and len(calls) == 1)
    private_redis.stop()
    assert poll_until(lambda: fleet.connected is False)
    private_redis.start()  # the same port, an empty Redis: messages were missed
    assert poll_until(lambda: fleet.connected is True and len(calls) == 2, timeout_s=10)


def test_a_callback_that_fails_does_not_stop_the_subscriber(make_fleet):
    a, b = make_fleet(replica_id="a"), make_fleet(replica_id="b")
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise RuntimeError("bug in a callback")

    b.start(on_change=flaky)
    assert poll_until(lambda: len(calls) == 1)
    a.publish("activate", "v2")
    assert poll_until(lambda: len(calls) == 2)
    assert b.connected is True


def test_the_local_fleet_is_inert():
    fleet = LocalFleet("solo")
    with fleet.lock("anything"):
        fleet.publish("activate", "v1")
    fleet.share_archive("v1", lambda: pytest.fail("never read"))
    assert fleet.has_archive("v1") and fleet.fetch_archive("v1") is None
    assert fleet.connected is None and fleet.replica_id == "solo"
