"""Where the state shared by replicas lives: the active version, the previous one (for
rollback), the canary (a version and the share of traffic it serves) and the item scoring
matrix of every activated version.

Two implementations behind one `Store` protocol:

- `EmbeddedStore`: in-process; the active/previous versions persist in a small JSON file in
  the model directory so a restart comes back on the same version.
- `RedisStore`: redis-py. Keys are version-scoped (`<prefix>:items:<version>` is one hash with
  the stored matrix, its dtype, shape and per-row scales), so a replica fetches a version's
  embeddings in one round trip (HGETALL).

The request path never touches the store: a loaded model holds everything it needs in
memory, so serving continues when Redis goes away. Store failures surface as
`StoreUnavailable`. Activating a version (`set_active`) ends any canary in the same write,
so the stored state is never a mixture of two operations. Swap notifications, the fleet lock
and bundle distribution live in `service.fleet`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import redis

from service.errors import StoreUnavailable

ACTIVE_FILE = "ACTIVE.json"
_DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class ItemMatrix:
    """The stored item scoring matrix of one version: int8/fp16/fp32 rows (+ int8 scales)."""

    items: npt.NDArray[Any]  # (n_items + 1, dim)
    scales: npt.NDArray[np.float32] | None  # (n_items + 1,) when items is int8

    @property
    def nbytes(self) -> int:
        return int(self.items.nbytes + (0 if self.scales is None else self.scales.nbytes))


@dataclass(frozen=True)
class ActiveState:
    active: str | None = None
    previous: str | None = None
    canary: str | None = None  # a version serving `canary_percent` % of the traffic
    canary_percent: float = 0.0


class Store(Protocol):
    backend: str

    def get_state(self) -> ActiveState: ...

    def set_active(self, version: str, *, previous: str | None) -> None:
        """Record `version` as active (and `previous` for rollback); ends any canary."""

    def set_canary(self, version: str | None, *, percent: float = 0.0) -> None:
        """Start (or, with None, end) a canary of `version` on `percent` % of the traffic."""

    def put_items(self, version: str, matrix: ItemMatrix) -> None: ...

    def get_items(self, version: str) -> ItemMatrix | None: ...

    def has_items(self, version: str) -> bool: ...

    def delete_items(self, version: str) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class EmbeddedStore:
    """In-process store; the active version survives restarts through `ACTIVE.json`."""

    backend = "embedded"

    def __init__(self, state_dir: Path) -> None:
        self._file = state_dir / ACTIVE_FILE
        self._items: dict[str, ItemMatrix] = {}
        self._lock = threading.Lock()

    def get_state(self) -> ActiveState:
        try:
            raw = json.loads(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ActiveState()
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
        )

    def set_active(self, version: str, *, previous: str | None) -> None:
        self._write({"active": version, "previous": previous})

    def set_canary(self, version: str | None, *, percent: float = 0.0) -> None:
        state = self.get_state()
        self._write(
            {
                "active": state.active,
                "previous": state.previous,
                "canary": version,
                "canary_percent": percent if version is not None else 0.0,
            }
        )

    def _write(self, state: dict[str, object]) -> None:
        payload = json.dumps(state)
        tmp = self._file.with_suffix(".tmp")
        with self._lock:
            try:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(payload, encoding="utf-8")
                os.replace(tmp, self._file)  # atomic: a crash leaves the old or the new file
            except OSError as e:
                raise StoreUnavailable(f"cannot write {self._file}: {e}") from e

    def put_items(self, version: str, matrix: ItemMatrix) -> None:
        with self._lock:
            self._items[version] = matrix

    def get_items(self, version: str) -> ItemMatrix | None:
        with self._lock:
            return self._items.get(version)

    def has_items(self, version: str) -> bool:
        with self._lock:
            return version in self._items

    def delete_items(self, version: str) -> None:
        with self._lock:
            self._items.pop(version, None)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._items.clear()


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

    def items_key(self, version: str) -> str:
        return f"{self._prefix}:items:{version}"

    def get_state(self) -> ActiveState:
        try:
            active, previous, canary = self._redis.mget(
                [self.active_key, self.previous_key, self.canary_key]
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
            active=_text(active), previous=_text(previous), canary=version, canary_percent=percent
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

    def put_items(self, version: str, matrix: ItemMatrix) -> None:
        items = np.ascontiguousarray(matrix.items)
        mapping: dict[str, bytes | str] = {
            "dtype": items.dtype.name,
            "shape": ",".join(str(d) for d in items.shape),
            "items": items.tobytes(),
        }
        if matrix.scales is not None:
            mapping["scales"] = np.ascontiguousarray(matrix.scales, dtype=np.float32).tobytes()
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.items_key(version))
                pipe.hset(self.items_key(version), mapping=mapping)  # type: ignore[arg-type]
                pipe.execute()
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def get_items(self, version: str) -> ItemMatrix | None:
        try:
            raw: dict[bytes, bytes] = self._redis.hgetall(self.items_key(version))  # type: ignore[assignment]
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e
        if not raw:
            return None
        try:
            dtype = _DTYPES[raw[b"dtype"].decode()]
            shape = tuple(int(d) for d in raw[b"shape"].decode().split(","))
            items = np.frombuffer(raw[b"items"], dtype=dtype).reshape(shape)
            scales = np.frombuffer(raw[b"scales"], dtype=np.float32) if b"scales" in raw else None
        except (KeyError, ValueError) as e:
            raise StoreUnavailable(f"cached items of {version!r} are malformed: {e}") from e
        return ItemMatrix(items=items, scales=scales)

    def has_items(self, version: str) -> bool:
        try:
            return bool(self._redis.exists(self.items_key(version)))
        except redis.RedisError as e:
            raise StoreUnavailable(str(e)) from e

    def delete_items(self, version: str) -> None:
        try:
            self._redis.delete(self.items_key(version))
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
