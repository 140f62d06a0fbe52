"""Where the state shared by replicas lives: the active version, the previous one (for
rollback), the canary (a version and the share of traffic it serves) and the live item
catalog layered over every bundle (`service.catalog`: unavailable item IDs, and per version
the vectors of added or replaced items, with the revision every catalog change increments).

Two implementations behind one `Store` protocol:

- `EmbeddedStore`: in-process; the state persists in small files in the model directory
  (`ACTIVE.json`, `CATALOG.json`), so a restart comes back on the same version and catalog.
- `RedisStore`: redis-py, every key under one prefix: `active`, `previous`, `canary`,
  `catalog:revision`, `catalog:unavailable` (a set of item IDs), `catalog:versions` (the
  versions with item vectors) and `catalog:items:<version>` (a hash: item ID -> encoded row).
  Catalog changes are MULTI/EXEC transactions that also increment the revision.

Replicas read the state when told of a change and on a short poll (`service.fleet`), and the
catalog only when its revision moved; the request path never touches the store: a loaded
model holds everything it needs in memory, so serving continues when Redis goes away. Store
failures surface as `StoreUnavailable`. Activating a version (`set_active`) ends any canary
in the same write, so the stored state is never a mixture of two operations. Swap
notifications, the fleet lock and bundle distribution live in `service.fleet`.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import redis

from service.catalog import CatalogLayer
from service.errors import StoreUnavailable

ACTIVE_FILE = "ACTIVE.json"
CATALOG_FILE = "CATALOG.json"
# IDs per command when a change names many items (SADD / SREM arguments).
CHUNK = 10_000


@dataclass(frozen=True)
class ActiveState:
    active: str | None = None
    previous: str | None = None
    canary: str | None = None  # a version serving `canary_percent` % of the traffic
    canary_percent: float = 0.0
    catalog_revision: int | None = None  # None: no catalog change was ever recorded

    @property
    def empty(self) -> bool:
        """Nothing recorded: a new fleet, or a store that lost its data."""
        return self.active is None and self.catalog_revision is None


class Store(Protocol):
    backend: str

    def get_state(self) -> ActiveState: ...

    def set_active(self, version: str, *, previous: str | None) -> None:
        """Record `version` as active (and `previous` for rollback); ends any canary."""

    def set_canary(self, version: str | None, *, percent: float = 0.0) -> None:
        """Start (or, with None, end) a canary of `version` on `percent` % of the traffic."""

    def get_catalog(self) -> CatalogLayer: ...

    def set_availability(self, ids: Sequence[str], *, available: bool) -> tuple[int, int]:
        """Mark `ids` unavailable (or available again): (how many changed, new revision)."""
        ...

    def put_item_vectors(self, version: str, rows: Mapping[str, bytes]) -> int:
        """Add or replace item vectors of `version`; the new revision."""
        ...

    def delete_item_vectors(self, version: str) -> int:
        """Drop every item vector of `version`; the new revision."""
        ...

    def restore(self, state: ActiveState, layer: CatalogLayer) -> bool:
        """Write `state` and `layer` back into a store that lost its data; False (writing
        nothing) when it is not empty any more."""
        ...

    def delete_legacy_keys(self) -> int:
        """Delete keys that earlier releases wrote and nothing reads; how many."""
        ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class EmbeddedStore:
    """In-process store; the state survives restarts through `ACTIVE.json` and
    `CATALOG.json` in the model directory (written atomically)."""

    backend = "embedded"

    def __init__(self, state_dir: Path) -> None:
        self._file = state_dir / ACTIVE_FILE
        self._catalog_file = state_dir / CATALOG_FILE
        self._catalog: CatalogLayer | None = None  # as last read or written
        self._catalog_mtime: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def get_state(self) -> ActiveState:
        revision = self.get_catalog().revision if self._catalog_file.exists() else None
        try:
            raw = json.loads(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ActiveState(catalog_revision=revision)
        except (OSError, ValueError) as e:
            raise StoreUnavailable(f"cannot read {self._file}: {e}") from e
        if not isinstance(raw, dict):
            raise StoreUnavailable(f"{self._file} does not hold a JSON object")
        active, previous, canary = raw.get("active"), raw.get("previous"), raw.get("canary")
        percent = raw.get("canary_percent")
        return ActiveState(
            active=active if isinstance(active, str) else None,
            previous=previous if isinstance(previous, str) else None,
            canary=canary if isinstance(canary, str) else None,
            canary_percent=float(percent) if isinstance(percent, int | float) else 0.0,
            catalog_revision=revision,
        )

    def set_active(self, version: str, *, previous: str | None) -> None:
        self._write(self._file, {"active": version, "previous": previous})

    def set_canary(self, version: str | None, *, percent: float = 0.0) -> None:
        state = self.get_state()
        self._write(
            self._file,
            {
                "active": state.active,
                "previous": state.previous,
                "canary": version,
                "canary_percent": percent if version is not None else 0.0,
            },
        )

    # --- the catalog ----------------------------------------------------------------------

    def get_catalog(self) -> CatalogLayer:
        with self._lock:
            try:
                st = self._catalog_file.stat()
                mtime = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                return CatalogLayer()
            except OSError as e:
                raise StoreUnavailable(f"cannot read {self._catalog_file}: {e}") from e
            if self._catalog is None or mtime != self._catalog_mtime:
                self._catalog = _layer_from_json(self._catalog_file)
                self._catalog_mtime = mtime
            return self._catalog

    def set_availability(self, ids: Sequence[str], *, available: bool) -> tuple[int, int]:
        layer = self.get_catalog()
        before = layer.unavailable
        after = before.difference(ids) if available else before.union(ids)
        layer = replace(layer, revision=layer.revision + 1, unavailable=after)
        self._write_catalog(layer)
        return abs(len(after) - len(before)), layer.revision

    def put_item_vectors(self, version: str, rows: Mapping[str, bytes]) -> int:
        layer = self.get_catalog()
        items = {**layer.items, version: {**layer.vectors_of(version), **rows}}
        layer = replace(layer, revision=layer.revision + 1, items=items)
        self._write_catalog(layer)
        return layer.revision

    def delete_item_vectors(self, version: str) -> int:
        layer = self.get_catalog()
        items = {v: rows for v, rows in layer.items.items() if v != version}
        layer = replace(layer, revision=layer.revision + 1, items=items)
        self._write_catalog(layer)
        return layer.revision

    def restore(self, state: ActiveState, layer: CatalogLayer) -> bool:
        if not self.get_state().empty:
            return False
        if state.active is not None:
            self.set_active(state.active, previous=state.previous)
            if state.canary is not None:
                self.set_canary(state.canary, percent=state.canary_percent)
        self._write_catalog(layer)
        return True

    def _write_catalog(self, layer: CatalogLayer) -> None:
        self._write(self._catalog_file, _layer_to_json(layer))
        with self._lock:
            self._catalog, self._catalog_mtime = None, None  # re-read: mtime is the key

    def _write(self, path: Path, state: dict[str, object]) -> None:
        payload = json.dumps(state)
        tmp = path.with_suffix(".tmp")
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(payload, encoding="utf-8")
                os.replace(tmp, path)  # atomic: a crash leaves the old or the new file
            except OSError as e:
                raise StoreUnavailable(f"cannot write {path}: {e}") from e

    def delete_legacy_keys(self) -> int:
        return 0

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _layer_to_json(layer: CatalogLayer) -> dict[str, object]:
    return {
        "revision": layer.revision,
        "unavailable": sorted(layer.unavailable),
        "items": {
            version: {item: base64.b64encode(row).decode() for item, row in rows.items()}
            for version, rows in layer.items.items()
        },
    }


def _layer_from_json(path: Path) -> CatalogLayer:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return CatalogLayer(
            revision=int(raw["revision"]),
            unavailable=frozenset(str(i) for i in raw["unavailable"]),
            items={
                str(version): {str(i): base64.b64decode(row) for i, row in rows.items()}
                for version, rows in raw["items"].items()
            },
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise StoreUnavailable(f"cannot read {path}: {e}") from e


class RedisStore:
    """Redis-backed store shared by every replica that points at the same Redis."""

    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "recsys:v1", timeout_s: float = 2.0) -> None:
        self._prefix = prefix
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )

    # Keys, all under one prefix so several deployments can share a Redis.
    @property
    def active_key(self) -> str:
        return f"{self._prefix}:active"

    @property
    def previous_key(self) -> str:
        return f"{self._prefix}:previous"

    @property
    def canary_key(self) -> str:
        return f"{self._prefix}:canary"  # JSON {"version": ..., "percent": ...}

    @property
    def revision_key(self) -> str:
        return f"{self._prefix}:catalog:revision"

    @property
    def unavailable_key(self) -> str:
        return f"{self._prefix}:catalog:unavailable"

    @property
    def vector_versions_key(self) -> str:
        return f"{self._prefix}:catalog:versions"

    def vectors_key(self, version: str) -> str:
        return f"{self._prefix}:catalog:items:{version}"

    def get_state(self) -> ActiveState:
        try:
            active, previous, canary, revision = self._redis.mget(
                [self.active_key, self.previous_key, self.canary_key, self.revision_key]
            )
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        version, percent = None, 0.0
        if canary is not None:
            try:
                raw = json.loads(canary)
                version, percent = str(raw["version"]), float(raw["percent"])
            except (ValueError, TypeError, KeyError) as e:
                raise StoreUnavailable(f"{self.canary_key} is malformed: {e}") from e
        return ActiveState(
            active=_text(active),
            previous=_text(previous),
            canary=version,
            canary_percent=percent,
            catalog_revision=None if revision is None else int(revision),
        )

    def set_active(self, version: str, *, previous: str | None) -> None:
        try:
            with self._redis.pipeline(transaction=True) as pipe:  # all keys or none
                pipe.set(self.active_key, version)
                if previous is None:
                    pipe.delete(self.previous_key)
                else:
                    pipe.set(self.previous_key, previous)
                pipe.delete(self.canary_key)
                pipe.execute()
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def set_canary(self, version: str | None, *, percent: float = 0.0) -> None:
        try:
            if version is None:
                self._redis.delete(self.canary_key)
            else:
                self._redis.set(
                    self.canary_key, json.dumps({"version": version, "percent": percent})
                )
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    # --- the catalog ----------------------------------------------------------------------

    def get_catalog(self) -> CatalogLayer:
        """One consistent snapshot: re-read when the revision moved between the two reads."""
        try:
            for _ in range(5):
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.get(self.revision_key)
                    pipe.smembers(self.unavailable_key)
                    pipe.smembers(self.vector_versions_key)
                    revision, unavailable, versions = pipe.execute()
                names = sorted(_text(v) or "" for v in versions)
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.get(self.revision_key)
                    for version in names:
                        pipe.hgetall(self.vectors_key(version))
                    again, *tables = pipe.execute()
                if again == revision:
                    break
            else:
                raise StoreUnavailable("the catalog kept changing while it was read")
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return CatalogLayer(
            revision=int(revision or 0),
            unavailable=frozenset(_text(i) or "" for i in unavailable),
            items={
                version: {_text(i) or "": bytes(row) for i, row in table.items()}
                for version, table in zip(names, tables, strict=True)
                if table
            },
        )

    def set_availability(self, ids: Sequence[str], *, available: bool) -> tuple[int, int]:
        unique = list(dict.fromkeys(ids))
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                for start in range(0, len(unique), CHUNK):
                    chunk = unique[start : start + CHUNK]
                    if available:
                        pipe.srem(self.unavailable_key, *chunk)
                    else:
                        pipe.sadd(self.unavailable_key, *chunk)
                pipe.incr(self.revision_key)
                *changed, revision = pipe.execute()
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return sum(int(c) for c in changed), int(revision)

    def put_item_vectors(self, version: str, rows: Mapping[str, bytes]) -> int:
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.vectors_key(version), mapping=dict(rows))  # type: ignore[arg-type]
                pipe.sadd(self.vector_versions_key, version)
                pipe.incr(self.revision_key)
                *_, revision = pipe.execute()
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return int(revision)

    def delete_item_vectors(self, version: str) -> int:
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.vectors_key(version))
                pipe.srem(self.vector_versions_key, version)
                pipe.incr(self.revision_key)
                *_, revision = pipe.execute()
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return int(revision)

    def restore(self, state: ActiveState, layer: CatalogLayer) -> bool:
        """Under the fleet lock (`service.registry`), so one replica writes and the others
        find the store no longer empty."""
        if not self.get_state().empty:
            return False
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                if state.active is not None:
                    pipe.set(self.active_key, state.active)
                if state.previous is not None:
                    pipe.set(self.previous_key, state.previous)
                if state.canary is not None:
                    canary = {"version": state.canary, "percent": state.canary_percent}
                    pipe.set(self.canary_key, json.dumps(canary))
                unavailable = sorted(layer.unavailable)
                for start in range(0, len(unavailable), CHUNK):
                    pipe.sadd(self.unavailable_key, *unavailable[start : start + CHUNK])
                for version, rows in layer.items.items():
                    pipe.hset(self.vectors_key(version), mapping=dict(rows))  # type: ignore[arg-type]
                    pipe.sadd(self.vector_versions_key, version)
                pipe.set(self.revision_key, layer.revision)
                pipe.execute()
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        return True

    def delete_legacy_keys(self) -> int:
        """Delete the item matrices earlier releases copied to `<prefix>:items:<version>` on
        every activation and nobody read; the number deleted."""
        try:
            keys = list(self._redis.scan_iter(match=f"{self._prefix}:items:*", count=1000))
            return int(self._redis.delete(*keys)) if keys else 0
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._redis.close()


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def open_store(
    *, redis_url: str | None, state_dir: Path, prefix: str = "recsys:v1", timeout_s: float = 2.0
) -> Store:
    """The Redis store when a URL is configured, else the embedded one."""
    if redis_url is None:
        return EmbeddedStore(state_dir)
    return RedisStore(redis_url, prefix=prefix, timeout_s=timeout_s)
