"""Inference: turn a history of external item IDs into scored recommendations.

A `LoadedModel` is immutable once built and holds everything the request path needs in
memory: the encoder, the compact item matrix (int8 + per-row scales, or fp16/fp32), the
catalog scorer built on it, the vocabulary and the popularity order. Swapping models is
therefore one reference assignment (see `service.registry`), and a request keeps the model
it started with.

An int4 bundle's rows are unpacked once at load into int8 rows (values -8..7) and served with
their scales exactly as int8 rows are: its files are half the bytes of int8's, but at serve
time its item table takes int8's memory.

`recommend_batch` serves many requests with one encoder call and one scoring call: the entry
point for dynamic micro-batching (`service.batcher`). Per batch:
- histories are left-padded only to the longest history of their length group, not to
  max_len (positions count from the end, so the trimmed input gives the same user vector;
  Beauty histories average 9 items against max_len 50): a batch with one long history runs
  its short ones in a second, narrower encoder call when that saves more than the call costs
  (`length_groups`);
- full-catalog requests are scored together by `service.scorer.Scorer` (one onnxruntime
  graph: int8 products, banned items masked inside, exact two-stage top-k), or, for catalogs
  of `ann_min_items` items and more, searched in a faiss IVF index (`service.ann`);
- reranking requests touch only their candidates' rows, all of the batch's in one vectorized
  pass (`Scorer.score_sets`).
Python only loops over the requests and their own IDs, never over the catalog.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from bundle import Manifest
from bundle.pq import PQTable
from service.ann import AnnConfig, AnnIndex, build_for_catalog
from service.catalog import CatalogLayer, Rows, decode_rows, encode_vectors
from service.code_ann import build_for_codes
from service.code_scorer import CodeScorer
from service.encoder import Encoder
from service.scorer import CatalogScorer, Precision, Scorer
from service.settings import Settings

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

Strategy = Literal["model", "popular"]


@dataclass(frozen=True)
class ModelOptions:
    """How a bundle is served (from `Settings`); the same for every version."""

    intra_op_threads: int = 1
    scoring_precision: Precision = "int8"
    # Catalogs of at least this many items answer full-catalog requests from an ANN index.
    ann_min_items: int = 200_000
    ann: AnnConfig = field(default_factory=AnnConfig)
    # Niceness of the thread that loads and validates models (0 = as the request path): a
    # swap's CPU work then yields to the requests being served (`service.registry`).
    loader_nice: int = 10
    # Keep the version that was active before the current one loaded (`service.registry`):
    # rolling back to it, or activating it again, is then a reference swap, not a load.
    keep_previous: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelOptions:
        return cls(
            intra_op_threads=settings.onnx_intra_op_threads,
            scoring_precision=settings.scoring_precision,
            ann_min_items=settings.ann_min_items,
            ann=AnnConfig.from_settings(settings),
            loader_nice=settings.model_loader_nice,
            keep_previous=settings.model_keep_previous,
        )


# The request and answer records are NamedTuples: immutable like frozen dataclasses, and built
# at a fraction of their cost (one of each per request, on the request path).
class RecRequest(NamedTuple):
    history: Sequence[str]  # external IDs, most recent last
    k: int
    candidates: Sequence[str] | None = None  # rerank only these
    exclude: Sequence[str] = ()
    exclude_seen: bool = True


class Recommendation(NamedTuple):
    item_ids: list[str]
    scores: list[float]
    model_version: str
    strategy: Strategy
    unknown_history: int
    unknown_candidates: int
    inference_s: float = 0.0  # encoder time of the batch this request rode in
    queue_s: float = 0.0  # time spent waiting for a batch (0 on the direct path)


@dataclass(slots=True)
class _Prepared:
    request: RecRequest
    known: list[int]  # known history indices, in order
    unknown_history: int
    candidates: I64 | None  # known candidate indices, deduplicated, banned ones dropped
    unknown_candidates: int
    banned: list[int]  # indices that must not be returned (repeats allowed)
    user_row: int = -1  # row in the encoded batch, -1 for the popularity fallback
    ids: list[int] = field(default_factory=list)  # the answer: item indices, best first
    scores: list[float] = field(default_factory=list)


def build_scorers(
    items: npt.NDArray[Any], scales: F32 | None, pq: PQTable | None, options: ModelOptions
) -> tuple[CatalogScorer, AnnIndex | None]:
    """The exact catalog scorer of an item table, and the ANN index that answers its
    full-catalog requests when the catalog is large (then the scorer only reranks). A large
    pq4 catalog is searched in an IVF index over its own codes (`service.code_ann`)."""
    if pq is not None:
        code_ann = build_for_codes(pq, min_items=options.ann_min_items, config=options.ann)
        return CodeScorer(pq, catalog_top_k=code_ann is None), code_ann
    ann = build_for_catalog(items, scales, min_items=options.ann_min_items, config=options.ann)
    scorer = Scorer(
        items,
        scales,
        precision=options.scoring_precision,
        threads=options.intra_op_threads,
        catalog_top_k=ann is None,
    )
    return scorer, ann


class LoadedModel:
    def __init__(
        self,
        *,
        manifest: Manifest,
        encoder: Encoder,
        items: npt.NDArray[Any],
        scales: F32 | None,
        vocab: Sequence[str],
        popularity: I64,
        scorer: CatalogScorer | None = None,
        ann: AnnIndex | None = None,
        pq: PQTable | None = None,
        options: ModelOptions | None = None,
        catalog: CatalogLayer | None = None,
        base: LoadedModel | None = None,
    ) -> None:
        """`items` is the item table as served: dense rows (int4 ones unpacked to int8), or
        a pq4 table's packed codes (`pq`, whose `scorer` reads them). A model built by
        `with_catalog` has more rows than its bundle (the added items) and its `base`."""
        rows = len(vocab)
        width = manifest.dim if manifest.item_encoding != "pq4" else items.shape[-1]
        bundle_rows = manifest.n_items + 1
        if items.shape != (rows, width) or popularity.shape != (rows,) or rows < bundle_rows:
            raise ValueError(
                f"item matrix {items.shape}, vocab {len(vocab)} and popularity {popularity.shape} "
                f"do not match n_items + 1 = {bundle_rows}, dim = {manifest.dim}"
            )
        if scales is not None and scales.shape != (rows,):
            raise ValueError(f"item scales {scales.shape} do not match {rows} rows")
        self.manifest = manifest
        self.version = manifest.model_version
        self.max_len = manifest.max_len
        self.options = options or ModelOptions()
        self.pq = pq
        self._base = base  # None for the bundle's own model: no reference cycle to collect
        self.catalog = catalog or CatalogLayer()
        self._encoder = encoder
        self._encoder_rows = bundle_rows  # added items have no input embedding
        self._items = items
        self._scales = scales
        self._vocab = list(vocab)
        # dict(zip()): no Python-level loop over a catalog of up to millions of IDs.
        self._index = dict(zip(self._vocab[1:], range(1, rows), strict=True))
        self._popularity = popularity
        self._scorer: CatalogScorer = scorer or Scorer(items, scales)
        # Full-catalog top-k: the ANN index for large catalogs, else exact scoring.
        self._full: CatalogScorer | AnnIndex = ann or self._scorer
        self._ann = ann
        self.approximate = ann is not None
        # Unavailable rows: never answered (baked into the scorers, checked on reranks).
        blocked = sorted({self._index[i] for i in self.catalog.unavailable if i in self._index})
        self._blocked = frozenset(blocked)
        if blocked:
            rows_blocked = np.array(blocked, dtype=np.int64)
            self._scorer = self._scorer.with_blocked(rows_blocked)
            self._full = self._full.with_blocked(rows_blocked)
        # Most popular first; index 0 (padding) never appears. Stable: ties keep vocab order.
        order = np.argsort(-popularity[1:], kind="stable") + 1
        if blocked:
            order = order[~np.isin(order, blocked)]
        self._popular_order: I64 = order.astype(np.int64)

    @property
    def base(self) -> LoadedModel:
        """The model as loaded from its bundle (itself, unless built by `with_catalog`)."""
        return self._base or self

    @property
    def cache_tag(self) -> str:
        """Names what decides this model's answers: its version and catalog revision."""
        return f"{self.version}@{self.catalog.revision}"

    # --- the live catalog ---------------------------------------------------------------

    def with_catalog(self, layer: CatalogLayer) -> LoadedModel:
        """This version served under `layer` (`service.catalog`): its unavailable items
        never answered, its added item vectors merged over the bundle's table (new items at
        the end, replaced ones in place). Built from the bundle's model, never stacked on
        another layer; shares the encoder (and the scorers when no vectors are added)."""
        base = self.base
        stored = layer.vectors_of(self.version)
        items, scales, vocab, popularity = base._items, base._scales, base._vocab, base._popularity
        scorer, ann, pq = base._scorer, base._ann, base.pq
        if stored:
            added, skipped = decode_rows(base.manifest, base.pq, stored)
            if skipped:
                log.warning(
                    "%s: %d stored item vectors do not fit this bundle and are ignored, e.g. %r",
                    self.version,
                    len(skipped),
                    skipped[0],
                )
            items, scales, vocab, popularity = base._merged(added)
            pq = None if base.pq is None else PQTable(items, base.pq.codebooks)
            scorer, ann = build_scorers(items, scales, pq, base.options)
        model = LoadedModel(
            manifest=base.manifest,
            encoder=base._encoder,
            items=items,
            scales=scales,
            vocab=vocab,
            popularity=popularity,
            scorer=scorer,
            ann=ann,
            pq=pq,
            options=base.options,
            catalog=layer,
            base=base,
        )
        if stored:
            model.warm_up()  # its scorer is new: the first request pays no setup cost
        return model

    def _merged(self, added: Rows) -> tuple[npt.NDArray[Any], F32 | None, list[str], I64]:
        """The bundle's table with `added` rows merged: (items, scales, vocab, popularity)."""
        at = [self._index.get(i, 0) for i in added.ids]
        old = np.array([n for n, r in enumerate(at) if r], dtype=np.int64)
        new = np.array([n for n, r in enumerate(at) if not r], dtype=np.int64)
        replaced = np.array([r for r in at if r], dtype=np.int64)
        items = np.concatenate([self._items, added.rows[new]])
        items[replaced] = added.rows[old]
        scales = None
        if self._scales is not None and added.scales is not None:
            scales = np.concatenate([self._scales, added.scales[new]])
            scales[replaced] = added.scales[old]
        vocab = [*self._vocab, *(added.ids[n] for n in new.tolist())]
        popularity = np.concatenate([self._popularity, np.zeros(len(new), self._popularity.dtype)])
        return items, scales, vocab, popularity

    def encode_vectors(
        self, ids: Sequence[str], vectors: npt.NDArray[np.floating]
    ) -> dict[str, bytes]:
        """Item vectors in this version's space -> stored rows, encoded like its table."""
        return encode_vectors(self.manifest, self.pq, ids, vectors)

    @property
    def n_items(self) -> int:
        """Items this model can answer: the bundle's and the catalog's added ones."""
        return len(self._vocab) - 1

    @property
    def vocab(self) -> Sequence[str]:
        """External item IDs in index order (entry 0 is the padding entry "")."""
        return self._vocab

    @property
    def items(self) -> npt.NDArray[Any]:
        return self._items

    @property
    def scales(self) -> F32 | None:
        return self._scales

    @property
    def scorer(self) -> CatalogScorer:
        """The exact catalog scorer (reranks; full-catalog answers unless an ANN serves them)."""
        return self._scorer

    # --- request path -------------------------------------------------------------------

    def recommend(self, request: RecRequest) -> Recommendation:
        return self.recommend_batch([request])[0]

    def recommend_batch(self, requests: Sequence[RecRequest]) -> list[Recommendation]:
        prepared = [self._prepare(r) for r in requests]
        to_encode = [p for p in prepared if p.known]
        users, inference_s = self._encode_histories(to_encode)

        full = [p for p in to_encode if p.candidates is None]
        if full:
            k = max(p.request.k for p in full)
            banned = [p.banned for p in full]
            index, scores = self._full.top_k(users[[p.user_row for p in full]], banned, k)
            for p, row_ids, row_scores in zip(full, index.tolist(), scores.tolist(), strict=True):
                p.ids, p.scores = _finite_head(row_ids, row_scores, p.request.k)
        rerank = [p for p in to_encode if p.candidates is not None]
        if rerank:
            candidates = [p.candidates for p in rerank if p.candidates is not None]
            sets = self._scorer.score_sets(users[[p.user_row for p in rerank]], candidates)
            for p, cand, cand_scores in zip(rerank, candidates, sets, strict=True):
                p.ids, p.scores = _top_k(cand_scores, cand, p.request.k)

        vocab = self._vocab
        return [
            Recommendation(
                item_ids=[vocab[i] for i in p.ids],
                scores=p.scores,
                model_version=self.version,
                strategy="model",
                unknown_history=p.unknown_history,
                unknown_candidates=p.unknown_candidates,
                inference_s=inference_s,
            )
            if p.user_row >= 0
            else self._popular(p)
            for p in prepared
        ]

    def _encode_histories(self, to_encode: Sequence[_Prepared]) -> tuple[F32, float]:
        """One user vector per prepared request (its row becomes `user_row`), and the
        encoder time. Each length group is left-padded with 0 only to its own longest
        history (at least one column), most recent item last."""
        users = np.empty((len(to_encode), self.manifest.dim), dtype=np.float32)
        if not to_encode:
            return users, 0.0
        t0 = time.perf_counter()
        lengths = [min(len(p.known), self.max_len) for p in to_encode]
        for group in length_groups(lengths):
            width = max(lengths[r] for r in group)
            rows = [[0] * (width - lengths[r]) + to_encode[r].known[-width:] for r in group]
            users[group] = self.encode(np.array(rows, dtype=np.int64))  # (B, T) -> (B, dim)
        for row, p in enumerate(to_encode):
            p.user_row = row
        return users, time.perf_counter() - t0

    def encode(self, seqs: I64) -> F32:
        return self._encoder(seqs)

    # --- helpers --------------------------------------------------------------------------

    # The per-request helpers work on Python lists and sets: a request holds tens to a few
    # hundred IDs, where numpy's per-call overhead (np.unique, np.isin) costs more than the
    # work. The catalog itself is never looped over.

    def _lookup(self, ids: Sequence[str]) -> tuple[list[int], int]:
        """Known indices in order, and how many IDs were unknown (dropped)."""
        idx = list(map(self._index.get, ids, itertools.repeat(0, len(ids))))
        if 0 in idx:
            known = [i for i in idx if i]
            return known, len(idx) - len(known)
        return idx, 0

    def _prepare(self, r: RecRequest) -> _Prepared:
        known, unknown = self._lookup(r.history)
        excluded = self._lookup(r.exclude)[0] if r.exclude else []
        banned = [*known, *excluded] if r.exclude_seen else excluded
        if len(self._vocab) > self._encoder_rows:  # added items: banned if seen, not encoded
            encodable = [i for i in known if i < self._encoder_rows]
            unknown += len(known) - len(encodable)
            known = encodable
        candidates: I64 | None = None
        unknown_candidates = 0
        if r.candidates is not None:
            cand, unknown_candidates = self._lookup(r.candidates)
            ban, blocked = set(banned), self._blocked
            # deduplicated in the caller's order, banned and unavailable ones dropped
            candidates = np.array(
                [c for c in dict.fromkeys(cand) if c not in ban and c not in blocked],
                dtype=np.int64,
            )
        return _Prepared(r, known, unknown, candidates, unknown_candidates, banned)

    def _popular(self, p: _Prepared) -> Recommendation:
        """The popularity fallback: no known history to encode."""
        k = p.request.k
        if p.candidates is not None:
            cand = p.candidates  # banned ones already dropped
            ranked = cand[np.argsort(-self._popularity[cand], kind="stable")][:k]
        else:
            head = self._popular_order[: k + len(p.banned)]
            ranked = head[~np.isin(head, p.banned)][:k]
        return Recommendation(
            item_ids=[self._vocab[i] for i in ranked.tolist()],
            scores=self._popularity[ranked].astype(np.float32).tolist(),
            model_version=self.version,
            strategy="popular",
            unknown_history=p.unknown_history,
            unknown_candidates=p.unknown_candidates,
        )

    def warm_up(self) -> None:
        """Run the whole request path once so the first real request pays no setup cost."""
        some = self._vocab[1 : 1 + min(3, self.n_items)]
        self.recommend_batch(
            [
                RecRequest(history=some, k=min(10, self.n_items)),
                RecRequest(history=some, k=1, candidates=some),
                RecRequest(history=[], k=1),
            ]
        )


# A second encoder call pays for itself when it saves at least this many padded positions:
# its fixed cost over the cost of one position (`make bench-model-cost` fits both; the
# figures per machine are in docs/decisions/2026-12-06-encoder-length-groups.md).
CALL_COST_POSITIONS = 85


def length_groups(lengths: Sequence[int], call_cost: int = CALL_COST_POSITIONS) -> list[list[int]]:
    """Split a batch's rows into groups encoded separately, each padded to its own longest
    history, when that saves more padded positions than an extra call costs. Real histories
    are mostly short with a long tail (Beauty: mean 8.5, capped at 50), so one long history
    would otherwise pad the whole batch to 50. The rows are sorted by length and the group of
    the shortest ones split at its best point for as long as that pays; longest group first."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    groups: list[list[int]] = []
    while len(order) > 1:
        n, longest = len(order), lengths[order[-1]]
        cost, cut = min(
            (i * lengths[order[i - 1]] + (n - i) * longest + call_cost, i) for i in range(1, n)
        )
        if cost >= n * longest:
            break
        groups.append(order[cut:])
        order = order[:cut]
    groups.append(order)
    return groups


def _finite_head(index: list[int], scores: list[float], k: int) -> tuple[list[int], list[float]]:
    """The first k entries of a best-first row, without the -inf (banned) entries that end
    it when fewer than k items were allowed."""
    n = min(k, len(scores))
    while n and scores[n - 1] == -math.inf:
        n -= 1
    return index[:n], scores[:n]


def _top_k(scores: F32, index: I64, k: int) -> tuple[list[int], list[float]]:
    """The k best finite scores, best first, as (item indices, scores)."""
    finite = np.isfinite(scores)
    if not finite.all():
        scores, index = scores[finite], index[finite]
    k = min(k, len(scores))
    if k <= 0:
        return [], []
    # Partial selection of the k best (no full sort of the candidates), then order those k.
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    best = part[np.argsort(-scores[part], kind="stable")]
    return index[best].tolist(), scores[best].tolist()
