"""Scoring straight from a product-quantized item table's codes (item_encoding "pq4").

A user's score for item i is the sum of M entries of its lookup table,
`lut[m, code(i, m)] = user[m-th slice] . codebooks[m, code(i, m)]` (asymmetric distance
computation, `bundle.pq`). No dense copy of the table is ever built. Full-catalog top k runs
in two stages and is exact:

1. faiss's 4-bit fast scan (`IndexPQFastScan`, the bundle's packed codes as they are) scans
   every item with SIMD lookups into the same tables rounded to 8 bits per entry, and
   shortlists the `width` best items per user by that approximate score;
2. the shortlist is rescored exactly from the float tables, and its best k are the answer
   once they are *certified*: faiss rounds each table entry to a step of
   `max_m span_m / 255` (span_m: the max minus the min of the user's table m), so an
   approximate score is within `M * step / 2` of the exact one. Every item outside the
   shortlist scored at most the shortlist's lowest approximate score `a_min`, so at most
   `a_min + M * step / 2` exactly. When the k-th exact score beats that bound (with a 2x
   margin on it), no item outside can enter the top k. Otherwise the row is rescanned with a
   4x wider shortlist, and at last exactly over the whole catalog (never seen in the tests).

Exact scores come from one function (`PQTable.scores` on `PQTable.lookup_tables`, built
the same way for any batch), so a user's answer does not depend on its batch, and reranking
(`score_sets`) agrees with full-catalog answers to the bit.

Catalogs of `Settings.ann_min_items` items and more are searched in an IVF index over the
same codes instead (`service.code_ann`, same exact rescoring); this scorer then only reranks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import faiss
import numpy as np
import numpy.typing as npt

from bundle.pq import PQ_MAX_CENTROIDS, PQTable

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
Rows = Sequence[int] | npt.NDArray[np.integer]

SHORTLIST_MARGIN = 16  # shortlist beyond k and the user's banned rows
BOUND_SAFETY = 2.0  # margin on the rounding bound (faiss's exact rounding is its business)
WIDEN = 4


class CodeScorer:
    """The `service.scorer.Scorer` interface (`top_k`, `score`, `score_sets`) over a pq4
    table."""

    precision: Literal["pq4"] = "pq4"

    def __init__(self, table: PQTable, *, catalog_top_k: bool = True) -> None:
        """`catalog_top_k=False` builds no fast-scan index (an ANN index over the codes,
        `service.code_ann`, answers full-catalog requests; only the reranks run here)."""
        self.table = table
        self.rows = table.rows
        self.dim = table.dim
        self._index = _fast_scan_index(table) if catalog_top_k else None
        self._blocked: npt.NDArray[np.bool_] | None = None  # rows never returned

    def with_blocked(self, rows: I64) -> CodeScorer:
        """Shares the codes and the index; `top_k` never returns `rows`."""
        other = copy.copy(self)
        other._blocked = np.zeros(self.rows, dtype=bool)
        other._blocked[rows] = True
        return other

    # --- the Scorer interface -------------------------------------------------------------

    def top_k(self, users: F32, banned: Sequence[Rows], k: int) -> tuple[I64, F32]:
        """(B, dim) users, banned rows per user -> (B, min(k, rows)) indices and scores, best
        first; rows with fewer allowed items are padded with index 0 and -inf."""
        if self._index is None:
            raise RuntimeError("this scorer was built without its fast-scan index")
        users = np.ascontiguousarray(users, dtype=np.float32)
        k = min(k, self.rows)
        luts = self.table.lookup_tables(users)
        out_idx = np.zeros((len(users), k), dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        width = min(self.rows, k + max((len(b) for b in banned), default=0) + SHORTLIST_MARGIN)
        pending = np.arange(len(users))
        while len(pending):
            approx, shortlist = self._index.search(users[pending], width)
            idx, scores, settled = self._settle(
                luts[pending], [banned[r] for r in pending.tolist()], approx, shortlist, k
            )
            done = pending[settled]
            out_idx[done], out_scores[done] = idx[settled], scores[settled]
            pending = pending[~settled]
            width = min(self.rows, width * WIDEN)
        return out_idx, out_scores

    def score(self, user: F32, rows: I64) -> F32:
        return self.score_sets(user[None, :], [rows])[0]

    def score_sets(self, users: F32, row_sets: Sequence[I64]) -> list[F32]:
        """Each user against its own rows, from the codes: B arrays of scores."""
        luts = self.table.lookup_tables(np.ascontiguousarray(users, dtype=np.float32))
        return [
            self._exact(luts[b], np.asarray(rows, dtype=np.int64))
            for b, rows in enumerate(row_sets)
        ]

    # --- helpers --------------------------------------------------------------------------

    def _exact(self, lut: F32, rows: I64) -> F32:
        scores: F32 = self.table.scores(lut[None], rows[None])[0]
        return scores

    def _settle(
        self, luts: F32, banned: Sequence[Rows], approx: F32, shortlist: I64, k: int
    ) -> tuple[I64, F32, npt.NDArray[np.bool_]]:
        """Each user's exact top k within its shortlist, and which of them are certified."""
        n, width = shortlist.shape
        rows = np.maximum(shortlist, 0)  # faiss pads with -1 only past the catalog's end
        exact = self.table.scores(luts, rows)  # (n, width)
        drop = (rows == 0) | _banned_mask(rows, banned)
        if self._blocked is not None:  # fewer than k left: not certified, the search widens
            drop |= self._blocked[rows]
        exact[drop] = -np.inf
        order = np.lexsort((rows, -exact), axis=-1)[:, :k]  # best first; ties by row index
        best_rows = np.take_along_axis(rows, order, axis=1)
        best = np.take_along_axis(exact, order, axis=1)
        if width == self.rows:  # every item was on the shortlist
            return best_rows, best, np.ones(n, dtype=bool)
        span = (luts.max(axis=2) - luts.min(axis=2)).max(axis=1)
        bound = approx[:, -1] + BOUND_SAFETY * self.table.m * span / (2 * 255)
        return best_rows, best, best[:, -1] > bound


def _banned_mask(rows: I64, banned: Sequence[Rows]) -> npt.NDArray[np.bool_]:
    """(n, width) True where row b's item is in banned[b]. Bans are short (a history, an
    exclude list): comparing against a padded (n, longest ban) matrix beats sorting."""
    longest = max((len(b) for b in banned), default=0)
    if longest == 0:
        return np.zeros(rows.shape, dtype=bool)
    padded = np.full((len(banned), longest), -1, dtype=np.int64)  # -1 matches no row
    for b, ban in enumerate(banned):
        padded[b, : len(ban)] = ban
    mask: npt.NDArray[np.bool_] = (rows[:, :, None] == padded[:, None, :]).any(axis=2)
    return mask


def _fast_scan_index(table: PQTable) -> faiss.IndexPQFastScan:
    """faiss's 4-bit fast-scan index over the table's packed codes (inner product)."""
    flat = faiss.IndexPQ(table.dim, table.m, 4, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(faiss_centroids(table).ravel(), flat.pq.centroids)
    flat.is_trained = True
    faiss.copy_array_to_vector(np.ascontiguousarray(table.packed).ravel(), flat.codes)
    flat.ntotal = table.rows
    # faiss converts an IndexPQ's codes to its SIMD block layout (the stubs know only the
    # (d, M, nbits) constructor)
    return faiss.IndexPQFastScan(flat)  # type: ignore[arg-type]


def faiss_centroids(table: PQTable) -> F32:
    """The table's codebooks as a faiss 4-bit product quantizer holds them, (M, 16, dim / M);
    the slots past a smaller codebook stay zero (no code points at them)."""
    centroids = np.zeros((table.m, PQ_MAX_CENTROIDS, table.dim // table.m), dtype=np.float32)
    centroids[:, : table.centroids] = table.codebooks
    return centroids
