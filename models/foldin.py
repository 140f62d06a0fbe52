"""Item fold-in: vectors for items a served bundle never saw, without retraining it.

A shop launches products between model releases. The service merges vectors for such items
over a version's item table (`POST /admin/catalog/items/{version}`); this module computes
them from recent interactions and the bundle itself:

    python -m models foldin --bundle DIR --interactions FILE --out items.json [--method lsq]

    from models.foldin import FoldInConfig, fold_in, write_items_json
    result = fold_in(bundle.read_bundle(dir), sequences, FoldInConfig())  # external IDs
    write_items_json(Path("items.json"), version, result)

Each occurrence of a new item (an ID not in the bundle's vocab) in a user's sequence is one
user who chose it. The bundle's own encoder turns that user's history of known items before
the occurrence (the last max_len; new items are dropped, as the service drops unknown IDs)
into a user vector u. An occurrence with no known item before it says nothing about the user
and is skipped; an item with fewer than `min_occurrences` usable occurrences gets no vector.
Two ways to turn the users into the item's vector v:

- softmax (the default): the new rows are learned as the model learned its own, by the
  next-item cross-entropy over the whole catalog plus the new items, with the encoder and the
  bundle's rows (decoded as the service scores them) frozen. Every training position counts:
  a new item's occurrences pull its score up for its users, and every position whose next
  item is another one pushes all new items' scores down below that item, for every user. So
  an item is scored high where its buyers' histories point, and not merely along the
  direction that all user vectors share. The positions whose next item is known are
  subsampled (`negatives`, weighted to stand for all of them): each is encoded and costs a
  product with every new row at every step; on Beauty 20,000 of about 207,000 do as well
  on validation as 60,000. L2 on the new rows (`l2`, in units of the mean |u|^2 of the
  positions, as the ridge) keeps an item seen once from taking its users' whole answers.
  Full-batch L-BFGS from zero rows: seconds on small data, about a minute on Beauty's
  4,968 new items on 2 CPU cores.
- lsq: a ridge regression, the item half-step of alternating least squares with the users
  held fixed (Hu, Koren & Volinsky, ICDM 2008):

      v = argmin_v  sum_u (u.v - t_u)^2 + lam |v|^2  =  (U'U + lam I)^-1 U't
      lam = ridge * mean_u |u|^2

  with t_u the user's `target_rank`-th best score over the bundle's catalog (the items of the
  history excluded, as the service bans them). Nothing pushes u.v down for users who did
  not choose the item, so a vector fitted to a few users, pointing along what user vectors
  share, scores high for most others too: on Beauty the setting that serves the new items'
  buyers best fills most answers with new items.

On Amazon Beauty with a tenth of the items new (`benchmarks/foldin.py`,
benchmarks/results/catalog-foldin.md), each method with its setting chosen on all validation
events: softmax (l2 0.1, the default) ranks the held-out test targets at NDCG@10 0.032,
against 0.013 for popularity and 0.007 for least squares, and lifts NDCG@10 over all test
events 6% above the bundle alone, where least squares only matches it; new items take 18% of
the answer slots. Tuned for the new items' buyers alone, least squares answers them best
(0.044) but fills 80% of the slots with new items and costs the other answers 43% of their
NDCG@10; softmax so tuned (l2 0.03) gets 0.041 for 14%. A lower l2 buys new items exposure
at that cost.

Output: {"version": <bundle model_version>, "items": [{"item_id": ..., "vector": [...]}]};
{"items": [...]} is the body of the admin route, whose path names the version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

import bundle
from models.evaluate import onnx_encoder
from models.losses import CHUNK_ELEMENTS
from models.split import pad_left

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


Method = Literal["softmax", "lsq"]
METHODS: tuple[Method, ...] = ("softmax", "lsq")


@dataclass(frozen=True)
class FoldInConfig:
    # Defaults: the best validation NDCG@10 on all events of benchmarks/foldin.py on Amazon
    # Beauty (benchmarks/results/catalog-foldin.json, "chosen"; see the module docstring).
    method: Method = "softmax"
    # softmax
    l2: float = 0.1  # lam in units of the mean |u|^2 of the positions; > 0
    negatives: int = 20_000  # positions with a known next item sampled as negatives
    iterations: int = 100  # L-BFGS iterations at most
    seed: int = 0  # the negatives' sample
    # lsq
    ridge: float = 10.0  # lam in units of the item's mean |u|^2; > 0
    target_rank: int = 3  # t_u = the user's target_rank-th best catalog score
    # both
    min_occurrences: int = 1  # fewer usable occurrences: no vector
    batch_size: int = 256  # users encoded and scored at once

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        if not self.l2 > 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be at least 0, got {self.negatives}")
        if min(self.target_rank, self.min_occurrences, self.batch_size, self.iterations) < 1:
            raise ValueError(
                "target_rank, min_occurrences, batch_size and iterations must be at least 1"
            )


@dataclass
class Occurrences:
    """Every usable occurrence of a new item: whose it is and the history before it."""

    new_items: list[str]  # every new item seen, in order of first occurrence
    owner: I64  # (n,) per occurrence, its item's position in `new_items`
    histories: list[I64]  # (n,) bundle indices of the known items before it, the last max_len


@dataclass
class Evidence:
    """The user side of fold-in, computed once for any setting of either method."""

    occurrences: Occurrences
    users: F32  # (n, dim) the encoder's vector per occurrence
    top_scores: F32  # (n, R) each user's R best scores over unseen catalog items, best first
    log_norm: F32  # (n,) log sum_j exp(u.v_j) over the bundle's items (softmax)
    negatives: F32  # (m, dim) user vectors at sampled positions whose next item is known
    negative_log_norm: F32  # (m,)
    negative_weight: float  # such positions in all per sampled one

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


def sample_known_positions(
    sequences: Sequence[Sequence[str]],
    index: Mapping[str, int],
    *,
    max_len: int,
    n: int,
    seed: int,
) -> tuple[list[I64], int]:
    """Histories (the known items before, the last max_len) of a seeded sample of `n` of the
    positions whose item is known and has a known item before it; and how many there are."""
    places = []
    for s, seq in enumerate(sequences):
        rows = [index.get(item, 0) for item in seq]
        first = next((t for t, row in enumerate(rows) if row), len(rows))
        places += [(s, t) for t in range(first + 1, len(rows)) if rows[t]]
    picked = np.random.default_rng(seed).permutation(len(places))[:n]
    histories = []
    for p in np.sort(picked):
        s, t = places[p]
        known = [row for row in (index.get(item, 0) for item in sequences[s][:t]) if row]
        histories.append(np.array(known[-max_len:], dtype=np.int64))
    return histories, len(places)


def catalog_matrix(b: bundle.Bundle) -> F32:
    """The bundle's item table decoded to float32 (rows, dim), as the service scores it."""
    pq = b.pq
    return pq.decode() if pq is not None else bundle.decode_items(b.items, b.item_scales)


def gather_evidence(
    b: bundle.Bundle,
    sequences: Sequence[Sequence[str]],
    *,
    max_rank: int,
    negatives: int = 0,
    seed: int = 0,
    batch_size: int = 256,
) -> Evidence:
    """Encode every usable occurrence's history with the bundle's `model.onnx` and keep each
    user's `max_rank` best unseen catalog scores; with `negatives`, also a seeded sample of
    that many positions whose next item is known (for the softmax method)."""
    index = dict(zip(b.vocab[1:], range(1, len(b.vocab)), strict=True))
    occ = find_occurrences(sequences, index, max_len=b.manifest.max_len)
    encode = onnx_encoder(str(b.model_path))  # by path: external data resolves in the bundle
    items = catalog_matrix(b)
    rank = min(max_rank, len(items) - 1)
    users, top, log_norm = _encode_and_score(encode, items, occ.histories, rank, batch_size)
    sampled, known = sample_known_positions(
        sequences, index, max_len=b.manifest.max_len, n=negatives, seed=seed
    )
    negative_users, _, negative_log_norm = _encode_and_score(encode, items, sampled, 0, batch_size)
    weight = known / len(sampled) if sampled else 0.0
    return Evidence(occ, users, top, log_norm, negative_users, negative_log_norm, weight)


def _encode_and_score(
    encode: Callable[[I64], F32], items: F32, histories: Sequence[I64], rank: int, batch_size: int
) -> tuple[F32, F32, F32]:
    """Per history: its user vector, its `rank` best unseen catalog scores and the log-sum-exp
    of its scores over the whole catalog."""
    users = np.zeros((len(histories), items.shape[1]), dtype=np.float32)
    top = np.zeros((len(histories), rank), dtype=np.float32)
    log_norm = np.zeros(len(histories), dtype=np.float32)
    # Batches of similar length, each padded only to its longest (the encoder is left-trim
    # invariant, as models.evaluate uses it).
    order = np.argsort([len(h) for h in histories], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        hist = [histories[r] for r in rows]
        users[rows] = encode(pad_left(hist, max(len(h) for h in hist)))  # (B, T) -> (B, dim)
        scores = users[rows] @ items.T  # (B, N)
        peak = scores[:, 1:].max(axis=1)  # row 0 is padding
        log_norm[rows] = peak + np.log(np.exp(scores[:, 1:] - peak[:, None]).sum(axis=1))
        if rank:
            top[rows] = _best_unseen(scores, hist, rank)  # (B, R)
    return users, top, log_norm


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


def softmax_vectors(evidence: Evidence, config: FoldInConfig) -> F32:
    """Rows W for every new item of `evidence` minimizing, with L-BFGS, the next-item
    cross-entropy over the bundle's items and the new ones (their rows fixed, only W learns)

        sum_t w_t (log(exp(c_t) + sum_m exp(u_t.W_m)) - [y_t new] u_t.W_{y_t}) + lam |W|^2
        lam = l2 * mean_t |u_t|^2

    over the occurrences (y_t the new item, w_t = 1) and the sampled positions whose next item
    is known (w_t = `negative_weight`, so they stand for all of them); c_t is the log-sum-exp
    of u_t's scores over the bundle's catalog, its target's score being a constant here."""
    occ = evidence.occurrences
    users = torch.from_numpy(np.concatenate([evidence.users, evidence.negatives]))  # (P, dim)
    log_norm = torch.from_numpy(np.concatenate([evidence.log_norm, evidence.negative_log_norm]))
    n_pos = len(occ.owner)
    weight = torch.full((len(users),), evidence.negative_weight)
    weight[:n_pos] = 1.0
    positives = torch.from_numpy(occ.owner)
    total = float(weight.sum())  # all training positions: the objective is a mean over them
    lam = config.l2 * max(float(users.pow(2).sum(dim=1).mean()), 1e-12) if len(users) else 0.0
    w = torch.zeros(len(occ.new_items), users.shape[1], requires_grad=True)
    chunk = max(1, CHUNK_ELEMENTS // max(len(occ.new_items), 1))  # one (rows, new) chunk at once
    optimizer = torch.optim.LBFGS(
        [w], max_iter=config.iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = lam * w.pow(2).sum() / total
        value.backward()  # type: ignore[no-untyped-call]
        for start in range(0, len(users), chunk):
            stop = min(start + chunk, len(users))
            logits = users[start:stop] @ w.T  # (rows, new)
            norm = torch.logaddexp(log_norm[start:stop], torch.logsumexp(logits, dim=1))
            part = (weight[start:stop] * norm).sum()
            if start < n_pos:  # the occurrences come first
                r = torch.arange(start, min(stop, n_pos))
                part = part - logits[r - start, positives[r]].sum()
            (part / total).backward()  # type: ignore[no-untyped-call]
            value = value.detach() + part.detach() / total
        return value

    if len(users) and len(occ.new_items):
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return w.detach().numpy().astype(np.float32)


def fit_vectors(evidence: Evidence, config: FoldInConfig) -> FoldIn:
    """Vectors for the new items with at least `config.min_occurrences` occurrences: all of
    them at once (softmax) or one ridge solve each (lsq)."""
    occ = evidence.occurrences
    counts = np.bincount(occ.owner, minlength=len(occ.new_items))
    kept = np.flatnonzero(counts >= config.min_occurrences)
    if config.method == "softmax":
        # Every new item competes in the softmax, those that get no vector too.
        vectors = softmax_vectors(evidence, config)[kept]
    else:
        order = np.argsort(occ.owner, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        targets = evidence.targets(config.target_rank)
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
    evidence = gather_evidence(
        b, sequences, max_rank=c.target_rank, batch_size=c.batch_size,
        negatives=c.negatives if c.method == "softmax" else 0, seed=c.seed,
    )  # fmt: skip
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
