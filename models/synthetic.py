"""Deterministic synthetic interaction data with sequential structure a model can learn.

Items "i1".."iN" are split into topics laid out on rings. A user starts somewhere in one of
a few favourite topics and mostly walks forward along the ring by 1-3 steps (a Markov chain
to nearby items); sometimes jumps to another item of a favourite topic, or anywhere, chosen
with a Zipf popularity skew. Next-item prediction is therefore easy for a sequential model
(the next item is almost always one of the 3 successors of the last one) and hard for the
popularity baseline, which is what tests and the demo's acceptance check rely on.

    python -m models synth --out var/synthetic.txt --users 3000 --items 600 --seed 0
    python -m models compress --data var/synthetic.txt --out bundles/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass
class SyntheticConfig:
    n_users: int = 3000
    n_items: int = 600
    n_topics: int = 12
    min_len: int = 6
    max_len: int = 40
    p_follow: float = 0.85  # chance the next item is a ring successor of the current one
    p_favourite: float = 0.8  # on a jump: stay in the user's favourite topics
    zipf: float = 1.2  # popularity skew of jump targets
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_items < self.n_topics * 4:
            raise ValueError("need at least 4 items per topic")
        if not 2 <= self.min_len <= self.max_len:
            raise ValueError("need 2 <= min_len <= max_len")


def item_id(index: int) -> str:
    """External ID of 0-based synthetic item `index`: "i1".."iN"."""
    return f"i{index + 1}"


def generate(config: SyntheticConfig) -> list[tuple[str, list[str]]]:
    """Return [(user_id, [item_id, ...]), ...], chronological per user; same seed, same data."""
    c = config
    rng = np.random.default_rng(c.seed)
    # Topic t owns items bounds[t]..bounds[t+1]-1 (0-based), arranged on a ring.
    bounds = np.linspace(0, c.n_items, c.n_topics + 1).astype(int)
    # Popularity: a random Zipf weight per item and per topic.
    item_w = 1.0 / np.arange(1, c.n_items + 1) ** c.zipf
    item_w = item_w[rng.permutation(c.n_items)]
    topic_w = np.array([item_w[bounds[t] : bounds[t + 1]].sum() for t in range(c.n_topics)])
    topic_p = topic_w / topic_w.sum()
    steps = np.array([1, 2, 3])
    step_p = np.array([0.6, 0.25, 0.15])

    def jump(favourites: npt.NDArray[np.int64]) -> int:
        if rng.random() < c.p_favourite:
            t = int(rng.choice(favourites))
        else:
            t = int(rng.choice(c.n_topics, p=topic_p))
        lo, hi = bounds[t], bounds[t + 1]
        w = item_w[lo:hi]
        return int(lo + rng.choice(hi - lo, p=w / w.sum()))

    users: list[tuple[str, list[str]]] = []
    for u in range(c.n_users):
        n_fav = int(rng.integers(1, 4))
        favourites = rng.choice(c.n_topics, size=n_fav, replace=False, p=topic_p)
        length = int(rng.integers(c.min_len, c.max_len + 1))
        cur = jump(favourites)
        seq = [cur]
        seen = {cur}
        while len(seq) < length:
            for attempt in range(30):  # avoid repeats: redraw, then jump; rarely accept one
                if attempt < 5 and rng.random() < c.p_follow:
                    t = int(np.searchsorted(bounds, cur, side="right") - 1)
                    lo, hi = bounds[t], bounds[t + 1]
                    nxt = int(lo + (cur - lo + rng.choice(steps, p=step_p)) % (hi - lo))
                else:
                    nxt = jump(favourites)
                if nxt not in seen:
                    break
            cur = nxt
            seq.append(cur)
            seen.add(cur)
        users.append((f"u{u + 1}", [item_id(i) for i in seq]))
    return users


def write_text(users: list[tuple[str, list[str]]], path: Path) -> int:
    """Write the SASRec text format (`user item` per line); return the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for user, items in users:
            for item in items:
                f.write(f"{user} {item}\n")
                n += 1
    return n


def write_synthetic(path: Path, config: SyntheticConfig | None = None) -> int:
    """Generate with `config` (default demo size) and write it to `path`."""
    return write_text(generate(config or SyntheticConfig()), path)
