"""Approximate nearest-neighbour search over the item matrix, for large catalogs.

Exact scoring (`service.scorer`) reads every item for every user: fine at 54k items, about
20x the work at 1M. Catalogs with at least `Settings.ann_min_items` items are served from an
inverted-file index instead (faiss, inner product): k-means on a sample of the items makes
`nlist` centroids, every item goes into the list of its nearest centroid, and a query scores
the centroids, then only the items of its `nprobe` best lists. Within those lists the items
are held as 4-bit product-quantizer codes, one per dimension (`IndexIVFPQFastScan`, scanned
with SIMD lookup tables), which shortlist `refine` candidates per query; the shortlist is
then rescored exactly (`u . (q_i * s_i)` on the bundle's own rows, float32) and the best k
kept. So `nprobe >= nlist` with `refine >= n_items` is exhaustive: `AnnConfig.exhaustive()` /
`with_nprobe(nlist, refine=n_items)` give exactly the top-k of exact scoring, which is how
the tests prove the index's bookkeeping.

Why IVF with 4-bit codes and an exact rescoring: at the same recall it scans several times
faster than float32 lists and holds a fraction of their memory; the alternatives tried (more
lists, HNSW, an L2 index of MIPS-augmented vectors, two dimensions per code) lost on build
time or recall. The measurements are in docs/decisions/2026-12-06-ann-settings.md.
Measure a real bundle with `python -m benchmarks.catalog ann`. pq4 tables are indexed over
their own codes by `service.code_ann.CodeAnnIndex`, which shares this class's search.

Wiring it into the served model (`service.model`), once per loaded version; the index is
immutable afterwards and its searches are thread-safe and release the GIL:

    ann = build_for_catalog(items, scales, settings)   # None below ANN_MIN_ITEMS; seconds
    # full-catalog rows of a batch, exactly like `service.scorer.Scorer.top_k`:
    idx, scores = (ann or scorer).top_k(users, [p.banned for p in full], k)
    # (B, dim) float32 users -> (B, min(k, n_items)) int64 catalog rows >= 1 and float32
    # scores, best first; banned rows and row 0 (padding) never come back; -1 / -inf pad a
    # row that has fewer results (`_finite_head` drops them)

Without banned rows: `search(users, k)` -> (B, k) with nothing excluded but padding. Scores are
fp32 inner products with the dequantized rows, `u . (q_i * s_i)`: the scorer's
`precision="fp32"` scores; its int8 path quantizes users too, so a candidate reranked by
`Scorer.score` can score slightly differently from the same item found here.

faiss runs its own OpenMP threads; `AnnConfig.threads` (`ANN_THREADS`, default 1, like
`ONNX_INTRA_OP_THREADS`) sets how many, for the whole process.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from service.scorer import Rows, banned_matrix
from service.settings import Settings

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

# k-means training sample: points per centroid (faiss warns below 39) and iterations. More
# gives slightly better lists for a longer build; 40 x 10 builds 1M items in seconds.
TRAIN_POINTS_PER_LIST = 40
KMEANS_ITERATIONS = 10
# An nprobe that scans every list of any index.
EXHAUSTIVE = 1 << 30
# Rows dequantized to float32 at a time while adding the catalog to the index.
ADD_CHUNK_ROWS = 65536
# Candidates per query that the 4-bit codes shortlist and the exact scores then rank: the
# exact rescoring recovers what the codes blur (docs/decisions/2026-12-06-ann-settings.md).
REFINE = 100
# Product quantizer: one 4-bit code per dimension (faiss fast-scan); two dimensions per code
# cost too much recall (same record).
PQ_BITS = 4
MIN_TRAIN_POINTS = 256  # k-means of the 16 codes per sub-quantizer needs a few points each


@dataclass(frozen=True)
class AnnConfig:
    nlist: int = 0  # inverted lists; 0 = auto, round(sqrt(n_items))
    nprobe: int = 64  # lists scanned per query; >= nlist scans everything
    refine: int = REFINE  # candidates per query rescored exactly (at least k)
    threads: int = 1  # faiss OpenMP threads (process-wide)
    seed: int = 0  # k-means sample and initialisation

    @classmethod
    def from_settings(cls, settings: Settings) -> AnnConfig:
        return cls(
            nlist=settings.ann_nlist, nprobe=settings.ann_nprobe, threads=settings.ann_threads
        )

    def lists_for(self, n_items: int) -> int:
        """The number of lists for a catalog of `n_items` (at least 1, at most n_items)."""
        nlist = self.nlist or round(math.sqrt(n_items))
        return max(1, min(nlist, n_items))

    def exhaustive(self) -> AnnConfig:
        """The same lists, searched exhaustively: every list is scanned and every item
        rescored, so the results are exact."""
        return replace(self, nprobe=EXHAUSTIVE, refine=EXHAUSTIVE)


class AnnIndex:
    """An IVF inner-product index over catalog rows 1..n_items (row 0, padding, is left out).

    Build with `AnnIndex(items, scales, config)`: `items` is the bundle's (n_items + 1, dim)
    matrix, int8 with float32 per-row `scales`, or float16/float32 with `scales=None`.
    """

    def __init__(
        self, items: npt.NDArray[Any], scales: F32 | None, config: AnnConfig | None = None
    ) -> None:
        config = config or AnnConfig()
        if items.ndim != 2 or items.shape[0] < 2:
            raise ValueError(f"item matrix must be (n_items + 1, dim), got shape {items.shape}")
        if (scales is None) != (items.dtype != np.int8):
            raise ValueError("int8 items need per-row scales; float items take none")
        if scales is not None and scales.shape != (items.shape[0],):
            raise ValueError(f"item scales {scales.shape} do not match {items.shape[0]} rows")
        faiss.omp_set_num_threads(config.threads)
        t0 = time.perf_counter()
        self.config = config
        self.n_items = items.shape[0] - 1
        self.dim = items.shape[1]
        self.nlist = config.lists_for(self.n_items)
        self._items = items  # the exact rescoring reads the bundle's own rows (no copy)
        self._scales = scales
        quantizer = faiss.IndexFlatIP(self.dim)
        self._index: Any = faiss.IndexIVFPQFastScan(
            quantizer, self.dim, self.nlist, self.dim, PQ_BITS, faiss.METRIC_INNER_PRODUCT
        )
        self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        self._index.cp.niter = KMEANS_ITERATIONS
        self._index.cp.seed = config.seed
        # Train on a sample: k-means cost grows with points x lists, the lists barely improve.
        # A small catalog is sampled with repeats so that every code's k-means has points.
        rng = np.random.default_rng(config.seed)
        n_train = max(min(self.n_items, self.nlist * TRAIN_POINTS_PER_LIST), MIN_TRAIN_POINTS)
        repeats = n_train > self.n_items
        sample = np.sort(rng.choice(self.n_items, size=n_train, replace=repeats)) + 1
        self._index.train(_dequantize(items, scales, sample))
        for start in range(1, self.n_items + 1, ADD_CHUNK_ROWS):
            rows = np.arange(start, min(start + ADD_CHUNK_ROWS, self.n_items + 1))
            # Labels are the catalog rows themselves: search answers need no translation.
            self._index.add_with_ids(_dequantize(items, scales, rows), rows.astype(np.int64))
        self.build_s = time.perf_counter() - t0

    _blocked: npt.NDArray[np.bool_] | None = None  # rows never returned by `top_k`
    _n_blocked = 0

    def with_blocked(self, rows: I64) -> AnnIndex:
        """This index (shared, not copied) never returning `rows` from `top_k`: each search
        takes as many more candidates as there are blocked rows, so k allowed ones remain."""
        other = copy.copy(self)
        other._blocked = np.zeros(self.n_items + 1, dtype=bool)
        other._blocked[rows] = True
        other._n_blocked = int(other._blocked.sum())
        return other

    @property
    def nprobe(self) -> int:
        return min(self.config.nprobe, self.nlist)

    def with_nprobe(self, nprobe: int, *, refine: int | None = None) -> AnnIndex:
        """This index (shared, not copied) searched with another `nprobe` (and `refine`);
        `self.nlist` or more lists and `n_items` or more candidates rescore every item,
        which gives exactly the top-k of exact scoring."""
        if nprobe < 1 or (refine is not None and refine < 1):
            raise ValueError(f"nprobe and refine must be >= 1, got {nprobe} and {refine}")
        other = copy.copy(self)
        other.config = replace(self.config, nprobe=nprobe, refine=refine or self.config.refine)
        return other

    def search(self, users: F32, k: int) -> tuple[I64, F32]:
        """(B, dim) user vectors -> the k best catalog rows per user, best first.

        Returns (indices int64 (B, k), scores float32 (B, k)); indices are >= 1, or -1 with
        score -inf where fewer than k items were found in the lists scanned.
        """
        users = np.ascontiguousarray(users, dtype=np.float32)
        if users.ndim != 2 or users.shape[1] != self.dim:
            raise ValueError(f"users must be (B, {self.dim}), got shape {users.shape}")
        b = users.shape[0]
        idx = np.full((b, max(k, 0)), -1, dtype=np.int64)
        scores = np.full((b, max(k, 0)), -np.inf, dtype=np.float32)
        kk = min(k, self.n_items)
        if b == 0 or kk <= 0:
            return idx, scores
        # Per-call parameters: no shared state is mutated, so concurrent searches are safe.
        params = faiss.SearchParametersIVF()
        params.nprobe = self.nprobe
        wide = min(max(kk, self.config.refine), self.n_items)
        _, shortlist = self._index.search(users, wide, params=params)  # by the 4-bit codes
        exact = self._exact_scores(users, shortlist)
        best = np.lexsort((shortlist, -exact), axis=-1)[:, :kk]  # equal scores: lower row first
        found = np.take_along_axis(shortlist, best, axis=1)
        found_scores = np.take_along_axis(exact, best, axis=1)
        found[np.isneginf(found_scores)] = -1
        idx[:, :kk] = found
        scores[:, :kk] = found_scores
        return idx, scores

    def _exact_scores(self, users: F32, rows: I64) -> F32:
        """(B, dim) users and (B, W) catalog rows (-1 = none) -> (B, W) exact scores
        u . (q_i * s_i) in float32; -inf where there is no row."""
        present = rows >= 1
        safe = np.where(present, rows, 0)  # row 0 (padding) stands in for "none"
        vectors = self._items[safe].astype(np.float32)  # (B, W, dim)
        if self._scales is not None:
            vectors *= self._scales[safe][..., None]
        exact: F32 = np.einsum("bwd,bd->bw", vectors, users)
        exact[~present] = -np.inf
        return exact

    def top_k(self, users: F32, banned: Sequence[Rows], k: int) -> tuple[I64, F32]:
        """The interface of `service.scorer.Scorer.top_k`, so the served model can call either:
        (B, dim) users and banned rows per user -> (B, min(k, n_items)) indices and scores,
        best first, padded with -1 / -inf (which `service.model._finite_head` drops).

        One search of k + (the most banned rows of any user) rows serves the batch, which
        leaves every user at least its k best of the lists scanned once its own banned rows
        are dropped; the dropping is one vectorized comparison for the whole batch."""
        b = users.shape[0]
        if len(banned) != b:
            raise ValueError(f"{b} users, {len(banned)} banned lists")
        width = max(0, min(k, self.n_items))
        ban = banned_matrix(banned)  # padded with 0: never a search result
        blocked = self._blocked
        idx, scores = self.search(users, width + ban.shape[1] + self._n_blocked)
        drop = idx < 1
        if ban.size:
            drop |= (idx[:, :, None] == ban[:, None, :]).any(axis=2)
        if blocked is not None:
            drop |= blocked[np.maximum(idx, 0)]
        # The kept ones first, in their best-first order; then the dropped ones, blanked.
        order = np.argsort(drop, axis=1, kind="stable")[:, :width]
        idx = np.take_along_axis(idx, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        gone = np.take_along_axis(drop, order, axis=1)
        idx[gone] = -1
        scores[gone] = -np.inf
        return idx, scores


def build_for_catalog(
    items: npt.NDArray[Any], scales: F32 | None, *, min_items: int, config: AnnConfig
) -> AnnIndex | None:
    """The index a catalog of this size is served with, or None: exact scoring below
    `min_items` items (where it costs less than the index would save)."""
    if items.shape[0] - 1 < min_items:
        return None
    return AnnIndex(items, scales, config)


def _dequantize(items: npt.NDArray[Any], scales: F32 | None, rows: I64) -> F32:
    """Rows `rows` of the item matrix as contiguous float32 (what faiss indexes)."""
    block = items[rows].astype(np.float32)
    if scales is not None:
        block *= scales[rows, None]
    return np.ascontiguousarray(block)
