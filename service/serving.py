"""The serving snapshot (`Serving`: the active model, an optional canary and its share) and
which requests the canary answers.

A canary serves `percent` % of the traffic while the active version serves the rest. A request
that names a `user_id` is placed by a stable hash of it (sha256, not Python's `hash()`, which
is salted per process), so a user sees the same version on every request and on every replica;
a request without one is placed at random.

    Serving(stable=v1_model, canary=v2_model, canary_percent=10).pick("user-42")

`Serving` is immutable and the registry replaces it whole (one reference assignment), so the
request path reads it once and never sees half of a swap.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from service.model import LoadedModel

BUCKETS = 10_000  # percent resolution: 0.01 %


def bucket(user_id: str) -> int:
    """The user's fixed place in [0, BUCKETS): the same on every replica and every run."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_canary(user_id: str | None, percent: float) -> bool:
    """Whether this request goes to the canary: sticky by user_id, random without one."""
    if percent <= 0:
        return False
    if user_id is None:
        return random.random() * 100 < percent
    return bucket(user_id) < percent * BUCKETS / 100


@dataclass(frozen=True)
class Serving:
    """What answers requests: the active model and, optionally, a canary with its share."""

    stable: LoadedModel | None = None
    canary: LoadedModel | None = None
    canary_percent: float = 0.0

    def pick(self, user_id: str | None) -> LoadedModel | None:
        if self.canary is not None and in_canary(user_id, self.canary_percent):
            return self.canary
        return self.stable
