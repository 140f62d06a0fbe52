"""Request bodies for the serving benchmark: a storefront's mix of /recommend calls.

    from benchmarks.workload import WorkloadConfig, build_workload, histories_from_data
    histories = histories_from_data(Path("../shared/data/amazon-beauty.txt"), vocab=vocab)
    w = build_workload(vocab, histories, WorkloadConfig(seed=0))
    w.full[0]     # b'{"history":["12","7",...],"k":10}'
    w.rerank[0]   # b'{"history":[...],"k":10,"candidates":[... 50 to 200 IDs ...]}'

Two kinds of request, as a shop page makes them:

- full catalog (`{"history": [...], "k": 10}`): "recommended for you" over every item;
- rerank (`{"history": [...], "k": 10, "candidates": [...]}`): a search page's 50-200
  retrieved items, reordered for this shopper.

Histories are real users' most recent items (up to 50, most recent last) when a data file is
given, else synthetic ones drawn from the served catalog. Bodies are encoded once, here, so
the load generator spends its CPU on sending requests, not on building them. Plain Python
(no locust import): `benchmarks.serve` builds the workload file, `benchmarks/locustfile.py`
reads it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

HISTORY_LEN = 50  # each user's most recent items, as SASRec's max_len
# Below this many users with a known item, histories are synthesized from the catalog.
MIN_REAL_USERS = 100


@dataclass(frozen=True)
class WorkloadConfig:
    k: int = 10
    n_full: int = 3000  # distinct full-catalog bodies
    n_rerank: int = 1500  # distinct rerank bodies
    min_candidates: int = 50
    max_candidates: int = 200
    history_len: int = HISTORY_LEN
    # Synthetic histories: 1 + geometric length with this mean (Beauty's users average 8.8).
    synthetic_mean_len: float = 8.8
    seed: int = 0


@dataclass
class Workload:
    full: list[bytes]
    rerank: list[bytes]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "full": [b.decode() for b in self.full],
                "rerank": [b.decode() for b in self.rerank],
                "meta": self.meta,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Workload:
        d = orjson.loads(raw)
        return cls(
            full=[s.encode() for s in d["full"]],
            rerank=[s.encode() for s in d["rerank"]],
            meta=d.get("meta", {}),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> Workload:
        return cls.from_json(path.read_bytes())


def read_vocab(path: Path) -> list[str]:
    """A bundle's vocab.json without its padding entry: the catalog's external IDs."""
    vocab = json.loads(path.read_text(encoding="utf-8"))
    return [str(v) for v in vocab if v != ""]


def histories_from_data(
    path: Path, *, vocab: Sequence[str] | None = None, history_len: int = HISTORY_LEN
) -> list[list[str]]:
    """Each user's most recent `history_len` items (most recent last), from an interactions
    file in any format `models.readers` reads. With `vocab`, items outside the served catalog
    are left out (and users left with none)."""
    from models.readers import read_interactions  # numpy only; no torch

    data = read_interactions(path, min_interactions=1)
    known = set(vocab) if vocab is not None else None
    out: list[list[str]] = []
    for seq in data.sequences:
        items = [data.vocab[int(i)] for i in seq]
        if known is not None:
            items = [i for i in items if i in known]
        if items:
            out.append(items[-history_len:])
    return out


def synthetic_histories(
    vocab: Sequence[str], n: int, *, mean_len: float, history_len: int, rng: random.Random
) -> list[list[str]]:
    """`n` histories of 1 + geometric length (mean `mean_len`, at most `history_len`) drawn
    uniformly from the catalog without repeats."""
    p = 1.0 / max(mean_len, 1.0)
    out = []
    for _ in range(n):
        length = 1
        while length < history_len and rng.random() > p:
            length += 1
        idx = rng.sample(range(len(vocab)), min(length, len(vocab)))
        out.append([vocab[i] for i in idx])
    return out


def build_workload(
    vocab: Sequence[str],
    histories: Sequence[Sequence[str]] | None,
    config: WorkloadConfig | None = None,
    *,
    source: str = "",
) -> Workload:
    """Encode the request bodies: real `histories` when there are enough, else synthetic."""
    c = config or WorkloadConfig()
    if not vocab:
        raise ValueError("the catalog (vocab) is empty")
    rng = random.Random(c.seed)
    real = histories is not None and len(histories) >= MIN_REAL_USERS
    n = c.n_full + c.n_rerank
    if real and histories is not None:
        chosen = [
            list(histories[rng.randrange(len(histories))])[-c.history_len :] for _ in range(n)
        ]
        kind = "real"
    else:
        chosen = synthetic_histories(
            vocab, n, mean_len=c.synthetic_mean_len, history_len=c.history_len, rng=rng
        )
        kind = "synthetic"
    full = [orjson.dumps({"history": h, "k": c.k}) for h in chosen[: c.n_full]]
    lo = min(c.min_candidates, len(vocab))
    hi = min(c.max_candidates, len(vocab))
    rerank = []
    for h in chosen[c.n_full :]:
        cands = rng.sample(range(len(vocab)), rng.randint(lo, hi))
        rerank.append(
            orjson.dumps({"history": h, "k": c.k, "candidates": [vocab[i] for i in cands]})
        )
    lengths = [len(h) for h in chosen]
    meta = {
        "histories": kind,
        "source": source if real else "synthetic from the served catalog",
        "users_available": len(histories) if histories is not None else 0,
        "catalog_items": len(vocab),
        "mean_history_len": round(sum(lengths) / len(lengths), 2),
        "config": asdict(c),
    }
    return Workload(full=full, rerank=rerank, meta=meta)
