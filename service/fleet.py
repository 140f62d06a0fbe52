"""The fleet: replicas sharing one Redis hear about each other's swaps, take turns at admin
operations, and get bundles they never saw uploaded.

Three things, all under the store's key prefix:

- **Change notifications** on the pub/sub channel `<prefix>:events`: after an activation,
  rollback, canary or catalog change is recorded in the store, the replica that made it
  publishes `{"event": "activate"|"rollback"|"canary"|"catalog", "version": ...,
  "origin": <replica id>}`. Every replica runs a subscriber thread (`start` / `stop`, from
  the app's lifespan) that, on a message from another replica, calls `on_change`: the
  registry re-reads the stored state and converges to it. The message is only a nudge; the
  state in Redis is the truth. On (re)connection the subscriber calls `on_change` too, since
  messages sent while it was away are lost (pub/sub does not queue); it reconnects with
  exponential backoff. Between messages it calls `on_poll` every `poll_s` seconds: what no
  message announces (a FLUSHALL, a Redis restarted empty) shows up there.
- **The admin lock** `<prefix>:admin-lock`: `SET NX PX` with a random token, released by a
  compare-and-delete Lua script (the Redis docs' single-instance lock pattern,
  https://redis.io/docs/latest/develop/use/patterns/distributed-locks/), so a lock that
  expired and was taken by someone else is never deleted by its former holder. Waiting for
  it is bounded; then `AdminBusy` (409 at the edge).
- **Bundle distribution** `<prefix>:bundle:<version>`: a hash with the uploaded `.tar.gz`
  (`archive`) and its `sha256`, written once (first writer wins; another archive under the
  same version is refused). A replica asked to serve a version it has not installed fetches
  it here, checks the sha256, and installs it with the same validation as an upload.

`LocalFleet` stands in without Redis: for one process it does nothing (the registry's own
lock serializes), and for the workers of one host (`WORKERS`) it is a file lock in the shared
model directory plus a poll of the embedded store's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal, Protocol

import redis

from service.errors import AdminBusy, InvalidBundle, StoreUnavailable, VersionExists

log = logging.getLogger(__name__)

Event = Literal["activate", "rollback", "canary", "prepare", "catalog"]

# Compare-and-delete: release the lock only while it still holds our token.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Write the archive only if the version has none yet; return the sha256 stored before (or nil).
_SHARE = """
local existing = redis.call('hget', KEYS[1], 'sha256')
if existing then return existing end
redis.call('hset', KEYS[1], 'archive', ARGV[1], 'sha256', ARGV[2])
return false
"""

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


def new_replica_id() -> str:
    return uuid.uuid4().hex[:12]


class Fleet(Protocol):
    replica_id: str

    def lock(self, operation: str) -> AbstractContextManager[None]:
        """Hold the fleet-wide admin lock for `operation`; raise AdminBusy if it stays taken."""
        ...

    def publish(self, event: Event, version: str | None) -> None: ...

    def share_archive(self, version: str, read: Callable[[], bytes]) -> None:
        """Make the archive of an installed version (`read()` returns its bytes; only called
        when needed) available to every replica; VersionExists when another archive holds
        that version already."""

    def has_archive(self, version: str) -> bool: ...

    def fetch_archive(self, version: str) -> bytes | None:
        """The archive of `version`, sha256-verified; None when the fleet has none."""
        ...

    def start(
        self,
        on_change: Callable[[], None],
        on_prepare: Callable[[str], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        """Listen to the other replicas: `on_change()` after a swap, `on_prepare(version)`
        when one is about to activate `version`, `on_poll()` every few seconds."""
        ...

    def stop(self) -> None: ...

    @property
    def connected(self) -> bool | None:
        """Whether the subscriber is listening; None without one."""
        ...


class LocalFleet:
    """The workers of one host without Redis (`WORKERS`): they share the model directory and
    the embedded store's files. The admin lock is a file lock (`flock`) on
    `<model_dir>/.admin-lock`, and each worker polls the store (`poll_s`) to follow what
    another worker changed. A single process (`lock_path=None`, `poll_s=None`) needs neither:
    the registry's own lock serializes everything. Nothing to distribute or announce."""

    def __init__(
        self,
        replica_id: str | None = None,
        *,
        lock_path: Path | None = None,
        lock_wait_s: float = 10.0,
        poll_s: float | None = None,
    ) -> None:
        self.replica_id = replica_id or new_replica_id()
        self._lock_path = lock_path
        self._lock_wait_s = lock_wait_s
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def lock(self, operation: str) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a+") as f:
            deadline = time.monotonic() + self._lock_wait_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        f.seek(0)
                        raise AdminBusy(f.read().strip() or "another worker") from None
                    time.sleep(0.05)
            try:
                f.seek(0)
                f.truncate()
                f.write(f"{operation} on worker {self.replica_id}")
                f.flush()
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def publish(self, event: Event, version: str | None) -> None:
        pass

    def share_archive(self, version: str, read: Callable[[], bytes]) -> None:
        pass

    def has_archive(self, version: str) -> bool:
        return True  # every version is local: nothing to share

    def fetch_archive(self, version: str) -> bytes | None:
        return None

    def start(
        self,
        on_change: Callable[[], None],
        on_prepare: Callable[[str], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        if self._poll_s is None or on_poll is None:
            return
        poll_s, poll = self._poll_s, on_poll
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(poll_s):
                _call(poll)

        self._thread = threading.Thread(target=run, name="fleet-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def connected(self) -> bool | None:
        return None


class RedisFleet:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        replica_id: str | None = None,
        timeout_s: float = 2.0,
        lock_wait_s: float = 10.0,
        lock_ttl_s: float = 300.0,
        poll_s: float = 1.0,
    ) -> None:
        self.replica_id = replica_id or new_replica_id()
        self._prefix = prefix
        self._poll_s = poll_s
        self._lock_wait_s = lock_wait_s
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=5,  # pings an idle subscription: a dead link shows up
        )
        self._release = self._redis.register_script(_RELEASE)
        self._share = self._redis.register_script(_SHARE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False

    @property
    def channel(self) -> str:
        return f"{self._prefix}:events"

    @property
    def lock_key(self) -> str:
        return f"{self._prefix}:admin-lock"

    def bundle_key(self, version: str) -> str:
        return f"{self._prefix}:bundle:{version}"

    # --- the admin lock ---------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, operation: str) -> Iterator[None]:
        token = f"{operation} on replica {self.replica_id}|{uuid.uuid4().hex}"
        deadline = time.monotonic() + self._lock_wait_s
        try:
            while not self._redis.set(self.lock_key, token, nx=True, px=self._lock_ttl_ms):
                if time.monotonic() >= deadline:
                    holder = self._redis.get(self.lock_key)
                    raise AdminBusy(_holder(holder))
                time.sleep(0.05)
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        try:
            yield
        finally:
            try:
                self._release(keys=[self.lock_key], args=[token])
            except redis.RedisError as e:  # it expires after its TTL anyway
                log.warning("could not release the admin lock: %s", e)

    # --- notifications ----------------------------------------------------------------------

    def publish(self, event: Event, version: str | None) -> None:
        message = json.dumps({"event": event, "version": version, "origin": self.replica_id})
        try:
            self._redis.publish(self.channel, message)
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def start(
        self,
        on_change: Callable[[], None],
        on_prepare: Callable[[str], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._listen,
            args=(on_change, on_prepare, on_poll),
            name="fleet-subscriber",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._redis.close()

    @property
    def connected(self) -> bool | None:
        return self._connected

    def _listen(
        self,
        on_change: Callable[[], None],
        on_prepare: Callable[[str], None] | None,
        on_poll: Callable[[], None] | None,
    ) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
            try:
                pubsub.subscribe(self.channel)
                self._connected = True
                if backoff > BACKOFF_MIN_S:
                    log.info("fleet subscriber reconnected; re-reading the fleet state")
                backoff = BACKOFF_MIN_S
                _call(on_change)  # anything missed while not listening
                polled = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=min(0.5, self._poll_s))
                    if on_poll is not None and time.monotonic() - polled >= self._poll_s:
                        _call(on_poll)
                        polled = time.monotonic()
                    event = self._from_elsewhere(message.get("data")) if message else None
                    if event is None:
                        continue
                    version = event.get("version")
                    if event.get("event") != "prepare":
                        _call(on_change)
                    elif on_prepare is not None and isinstance(version, str):
                        _call(functools.partial(on_prepare, version))
            except redis.RedisError as e:
                if self._connected or backoff == BACKOFF_MIN_S:
                    log.warning("fleet subscriber lost Redis (%s); retrying", e)
                self._connected = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()
        self._connected = False

    def _from_elsewhere(self, data: object) -> dict[str, object] | None:
        """The event of a message another replica sent; None for ours (applied already) and
        for malformed ones."""
        try:
            payload = json.loads(data) if isinstance(data, bytes | str) else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            log.warning("ignoring a malformed fleet event: %r", data)
            return None
        log.info("fleet event %s", payload)
        return payload if payload.get("origin") != self.replica_id else None

    # --- bundle distribution ----------------------------------------------------------------

    def share_archive(self, version: str, read: Callable[[], bytes]) -> None:
        archive = read()
        digest = hashlib.sha256(archive).hexdigest()
        try:
            existing = self._share(keys=[self.bundle_key(version)], args=[archive, digest])
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        if existing is not None and _text(existing) != digest:
            raise VersionExists(version, in_fleet=True)  # one version name, one archive

    def has_archive(self, version: str) -> bool:
        try:
            return bool(self._redis.hexists(self.bundle_key(version), "sha256"))
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def fetch_archive(self, version: str) -> bytes | None:
        try:
            archive, digest = self._redis.hmget(self.bundle_key(version), ["archive", "sha256"])
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        if not isinstance(archive, bytes) or digest is None:
            return None
        if hashlib.sha256(archive).hexdigest() != _text(digest):
            raise InvalidBundle(f"the fleet's archive of {version!r} does not match its sha256")
        return archive


def _call(on_change: Callable[[], None]) -> None:
    # The subscriber must outlive any bug in a callback, or the replica stops following the
    # fleet silently; the error is logged with its traceback.
    try:
        on_change()
    except Exception:
        log.exception("applying a fleet change failed")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _holder(value: object) -> str:
    if value is None:
        return "the lock was just released"
    return _text(value).split("|", 1)[0]


def open_fleet(
    *,
    redis_url: str | None,
    prefix: str,
    replica_id: str | None = None,
    timeout_s: float = 2.0,
    lock_wait_s: float = 10.0,
    lock_ttl_s: float = 300.0,
    poll_s: float = 1.0,
    local_lock: Path | None = None,
) -> Fleet:
    """The Redis fleet when a URL is configured; else the workers of one host sharing
    `local_lock`'s directory (several `WORKERS`), or one process (`local_lock=None`)."""
    if redis_url is None:
        if local_lock is None:
            return LocalFleet(replica_id)
        return LocalFleet(replica_id, lock_path=local_lock, lock_wait_s=lock_wait_s, poll_s=poll_s)
    return RedisFleet(
        redis_url,
        prefix=prefix,
        replica_id=replica_id,
        timeout_s=timeout_s,
        lock_wait_s=lock_wait_s,
        lock_ttl_s=lock_ttl_s,
        poll_s=poll_s,
    )
