"""Item fold-in: vectors for items a served bundle never saw, without retraining it.

A shop launches products between model releases. The service merges vectors for such items
over a version's item table (`POST /admin/catalog/items/{version}`); this module computes
them from recent interactions and the bundle itself:

    python -m models foldin --bundle DIR --interactions FILE --out items.json

    from models.foldin import FoldInConfig, fold_in, write_items_json
    result = fold_in(bundle.read_bundle(dir), sequences, FoldInConfig())  # external IDs
    write_items_json(Path("items.json"), version, result)

Each occurrence of a new item (an ID not in the bundle's vocab) in a user's sequence is one
user who chose it. The bundle's own encoder turns that user's history of known items before
the occurrence (the last max_len; new items are dropped, as the service drops unknown IDs)
into a user vector u. The item's vector solves a ridge regression, the item half-step of
alternating least squares with the users held fixed (Hu, Koren & Volinsky, ICDM 2008):

    v = argmin_v  sum_u (u.v - t_u)^2 + lam |v|^2  =  (U'U + lam I)^-1 U't
    lam = ridge * mean_u |u|^2

The target t_u is the user's `target_rank`-th best score over the bundle's catalog (the items
of the history excluded, as the service bans them): an item scoring t_u would be answered
about `target_rank`-th. lam in units of one user's |u|^2 makes `ridge` mean the same for
every bundle and item: it weighs like `ridge` more users who gave the item a score of 0, so an
item seen once is pulled further below its targets than an item seen often. An occurrence
with no known item before it says nothing about the user and is skipped; an item with fewer
than `min_occurrences` usable occurrences gets no vector.

A vector fitted to a few users also scores high for many others, so new items take answer
slots from known ones. On Amazon Beauty with a tenth of the items new
(`benchmarks/foldin.py`, benchmarks/results/catalog-foldin.md), a high target and a low ridge
answer the new items' buyers best, far better than popularity, but fill most answers with new
items and cost the other answers much more than they gain; the defaults are the best setting
on all validation events, where fold-in leaves the answers as a whole as good as the bundle's
alone and new items are seldom answered. A lower `target_rank` and `ridge` buy new items
exposure at that cost.

Output: {"version": <bundle model_version>, "items": [{"item_id": ..., "vector": [...]}]};
{"items": [...]} is the body of the admin route, whose path names the version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import bundle
from models.evaluate import onnx_encoder
from models.split import pad_left

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FoldInConfig:
    # Defaults: the best validation NDCG@10 on all events of benchmarks/foldin.py on Amazon
    # Beauty (benchmarks/results/catalog-foldin.json, "chosen"; see the module docstring).
    ridge: float = 10.0  # lam in units of the item's mean |u|^2; > 0
    target_rank: int = 3  # t_u = the user's target_rank-th best catalog score
    min_occurrences: int = 1  # fewer usable occurrences: no vector
    batch_size: int = 256  # users encoded and scored at once

    def __post_init__(self) -> None:
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        if self.target_rank < 1 or self.min_occurrences < 1 or self.batch_size < 1:
            raise ValueError("target_rank, min_occurrences and batch_size must be at least 1")


@dataclass
class Occurrences:
    """Every usable occurrence of a new item: whose it is and the history before it."""

    new_items: list[str]  # every new item seen, in order of first occurrence
    owner: I64  # (n,) per occurrence, its item's position in `new_items`
    histories: list[I64]  # (n,) bundle indices of the known items before it, the last max_len


@dataclass
class Evidence:
    """The user side of fold-in, computed once for any ridge and target rank."""

    occurrences: Occurrences
    users: F32  # (n, dim) the encoder's vector per occurrence
    top_scores: F32  # (n, R) each user's R best scores over unseen catalog items, best first

    def targets(self, rank: int) -> F32:
        """t_u for `rank` (1-based); ranks beyond the R computed take the R-th score."""
        column = min(rank, self.top_scores.shape[1]) - 1
        return self.top_scores[:, column]


@dataclass
class FoldIn:
    item_ids: list[str]  # the items that got a vector
    vectors: F32  # (len(item_ids), dim)
    occurrences: I64  # usable occurrences per item of `item_ids`
    skipped: list[str]  # new items with fewer than min_occurrences usable occurrences


def find_occurrences(
    sequences: Sequence[Sequence[str]], index: Mapping[str, int], *, max_len: int
) -> Occurrences:
    """Scan chronological per-user sequences of external IDs for IDs missing from `index`
    (the bundle's vocab: ID -> row)."""
    new: dict[str, int] = {}
    owner: list[int] = []
    histories: list[I64] = []
    for seq in sequences:
        known: list[int] = []
        for item in seq:
            row = index.get(item)
            if row is not None:
                known.append(row)
                continue
            position = new.setdefault(item, len(new))
            if known:
                owner.append(position)
                histories.append(np.array(known[-max_len:], dtype=np.int64))
    return Occurrences(list(new), np.array(owner, dtype=np.int64), histories)


def catalog_matrix(b: bundle.Bundle) -> F32:
    """The bundle's item table decoded to float32 (rows, dim), as the service scores it."""
    pq = b.pq
    return pq.decode() if pq is not None else bundle.decode_items(b.items, b.item_scales)


def gather_evidence(
    b: bundle.Bundle, sequences: Sequence[Sequence[str]], *, max_rank: int, batch_size: int = 256
) -> Evidence:
    """Encode every usable occurrence's history with the bundle's `model.onnx` and keep each
    user's `max_rank` best unseen catalog scores."""
    occ = find_occurrences(
        sequences, dict(zip(b.vocab[1:], range(1, len(b.vocab)), strict=True)),
        max_len=b.manifest.max_len,
    )  # fmt: skip
    encode = onnx_encoder(str(b.model_path))  # by path: external data resolves in the bundle
    items = catalog_matrix(b)
    rank = min(max_rank, len(items) - 1)
    users = np.zeros((len(occ.histories), b.manifest.dim), dtype=np.float32)
    top = np.zeros((len(occ.histories), rank), dtype=np.float32)
    # Batches of similar length, each padded only to its longest (the encoder is left-trim
    # invariant, as models.evaluate uses it).
    order = np.argsort([len(h) for h in occ.histories], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        hist = [occ.histories[r] for r in rows]
        users[rows] = encode(pad_left(hist, max(len(h) for h in hist)))  # (B, T) -> (B, dim)
        top[rows] = _best_unseen(users[rows] @ items.T, hist, rank)  # (B, N) -> (B, R)
    return Evidence(occ, users, top)


def _best_unseen(scores: F32, histories: Sequence[I64], rank: int) -> F32:
    """Each row's `rank` best scores, best first, padding and the row's history excluded;
    where fewer items are left, the lowest one left fills the rest."""
    scores[:, 0] = -np.inf
    for row, h in enumerate(histories):
        scores[row, h] = -np.inf
    best = -np.partition(-scores, rank - 1, axis=1)[:, :rank]
    best = -np.sort(-best, axis=1)
    # Only a user who has seen nearly all of a tiny catalog runs out: repeat the last score.
    finite = np.isfinite(best)  # a prefix of each row
    last = np.take_along_axis(best, (finite.sum(axis=1, keepdims=True) - 1).clip(0), axis=1)
    out: F32 = np.where(finite, best, last).astype(np.float32)
    return out


def ridge_vector(users: F32, targets: F32, ridge: float) -> F32:
    """(U'U + lam I)^-1 U't with lam = ridge * mean |u|^2, in float64."""
    u = users.astype(np.float64)
    lam = ridge * max(float((u * u).sum(axis=1).mean()), 1e-12)
    a = u.T @ u + lam * np.eye(u.shape[1])
    v = np.linalg.solve(a, u.T @ targets.astype(np.float64))
    return np.asarray(v, dtype=np.float32)


def fit_vectors(evidence: Evidence, config: FoldInConfig) -> FoldIn:
    """One ridge solve per new item with at least `config.min_occurrences` occurrences."""
    occ = evidence.occurrences
    counts = np.bincount(occ.owner, minlength=len(occ.new_items))
    order = np.argsort(occ.owner, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    targets = evidence.targets(config.target_rank)
    kept = np.flatnonzero(counts >= config.min_occurrences)
    vectors = np.zeros((len(kept), evidence.users.shape[1]), dtype=np.float32)
    for out_row, item in enumerate(kept):
        rows = order[starts[item] : starts[item + 1]]
        vectors[out_row] = ridge_vector(evidence.users[rows], targets[rows], config.ridge)
    kept_set = set(kept.tolist())
    return FoldIn(
        item_ids=[occ.new_items[i] for i in kept],
        vectors=vectors,
        occurrences=counts[kept].astype(np.int64),
        skipped=[item for i, item in enumerate(occ.new_items) if i not in kept_set],
    )


def fold_in(
    b: bundle.Bundle, sequences: Sequence[Sequence[str]], config: FoldInConfig | None = None
) -> FoldIn:
    """Vectors, in `b`'s item space, for the items of `sequences` (per user, chronological
    external IDs) that `b`'s vocab lacks."""
    c = config or FoldInConfig()
    evidence = gather_evidence(b, sequences, max_rank=c.target_rank, batch_size=c.batch_size)
    return fit_vectors(evidence, c)


def items_payload(version: str, result: FoldIn) -> dict[str, Any]:
    """The file the CLI writes; "items" is the body of `POST /admin/catalog/items/{version}`."""
    return {
        "version": version,
        "items": [
            {"item_id": item, "vector": vector.tolist()}
            for item, vector in zip(result.item_ids, result.vectors, strict=True)
        ],
    }


def write_items_json(path: Path, version: str, result: FoldIn) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items_payload(version, result)), encoding="utf-8")
