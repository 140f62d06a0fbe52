"""A short-lived cache of whole answers in Redis, in front of the batcher.

Off by default; `ANSWER_CACHE_TTL_S=30` (with `REDIS_URL`) turns it on. One key per answer:

    <prefix>:answers:<model_version>@<catalog revision>:<sha256 of the normalized request>

where the normalized request is the canonical JSON (orjson, sorted keys) of everything that
decides the answer: `history`, `k`, `candidates`, `exclude`, `exclude_seen` (not `user_id`,
which is only logged), and the catalog revision is that of the live catalog the model serves
under (`service.catalog`). The value is the response body as sent, so a hit is returned byte
for byte and names the version that computed it. Activating another version, or any catalog
change (an item made unavailable, vectors added), therefore invalidates the cache without
deleting anything: the new state reads and writes new keys, and the old ones expire with
their TTL. An answer cached before an item became unavailable is never served after: no
replica that applied the change reads its key.

Every answer is cached, `popular` ones too: the key holds every input of the answer, so
there is one rule and nothing to special-case. Cache hits are counted in
`recsys_answer_cache_requests{result="hit"}`, not in `recsys_recommendations` (which counts
answers a model computed).

The cache never fails a request: on a Redis error or timeout it logs one warning, counts the
lookup as `result="error"`, and is bypassed (answers are computed, not cached) for
`RETRY_AFTER_S`, so a Redis that hangs costs one timeout every few seconds, not one per
request.
"""

from __future__ import annotations

import hashlib
import logging
import time

import orjson
import redis
import redis.asyncio

from service.metrics import Metrics
from service.model import RecRequest

log = logging.getLogger(__name__)

# After a Redis error, the cache is bypassed (and silent) for this long.
RETRY_AFTER_S = 5.0


def request_digest(request: RecRequest) -> str:
    """sha256 of the canonical JSON of the request fields that decide the answer."""
    normalized = orjson.dumps(
        {
            "history": list(request.history),
            "k": request.k,
            "candidates": None if request.candidates is None else list(request.candidates),
            "exclude": list(request.exclude),
            "exclude_seen": request.exclude_seen,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(normalized).hexdigest()


class AnswerCache:
    def __init__(
        self, url: str, *, prefix: str, ttl_s: float, timeout_s: float, metrics: Metrics
    ) -> None:
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._metrics = metrics
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._bypass_until = 0.0  # time.monotonic() before which Redis is not asked

    def key(self, tag: str, request: RecRequest) -> str:
        """`tag`: the answering model's `cache_tag` (version and catalog revision)."""
        return f"{self._prefix}:answers:{tag}:{request_digest(request)}"

    async def get(self, tag: str, request: RecRequest) -> bytes | None:
        """The cached response body for `request` under `tag`, or None (miss or error)."""
        if self._bypassed():
            self._metrics.answer_cache.labels(result="error").inc()
            return None
        try:
            body = await self._redis.get(self.key(tag, request))
        except (redis.RedisError, OSError) as e:
            self._failed(e)
            self._metrics.answer_cache.labels(result="error").inc()
            return None
        self._metrics.answer_cache.labels(result="miss" if body is None else "hit").inc()
        return body.encode() if isinstance(body, str) else body  # bytes: no decode_responses

    async def put(self, tag: str, request: RecRequest, body: bytes) -> None:
        """Cache `body` (best effort: an error is logged, never raised)."""
        if self._bypassed():
            return
        try:
            await self._redis.set(self.key(tag, request), body, px=self._ttl_ms)
        except (redis.RedisError, OSError) as e:
            self._failed(e)

    async def close(self) -> None:
        await self._redis.aclose()

    def _bypassed(self) -> bool:
        return time.monotonic() < self._bypass_until

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        if now >= self._bypass_until:  # the first error of an outage: say it once
            log.warning(
                "answer cache unavailable (%s); serving uncached for %.0f s", error, RETRY_AFTER_S
            )
        self._bypass_until = now + RETRY_AFTER_S
