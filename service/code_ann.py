"""Approximate search over a product-quantized item table's own codes, for large catalogs.

The pq4 counterpart of `service.ann` (item_encoding "pq4", `bundle.pq`): catalogs of at least
`Settings.ann_min_items` items are served from an inverted-file index whose lists hold the
bundle's 4-bit codes as they are. No float copy of the table is kept at any point:

1. k-means (`AnnConfig.lists_for`, sqrt(N) lists) on a sample of decoded rows gives the
   coarse centroids, as in `service.ann`;
2. the catalog is decoded a chunk at a time only to find each item's list (the centroid of
   highest inner product, faiss's IVF rule); the chunk is then dropped and the item's packed
   codes go into its list unchanged (`IndexIVF.add_sa_codes`). The lists' product quantizer
   is the bundle's codebooks with `by_residual = False`, so a listed code means what it
   means in the bundle. (faiss's fast-scan lists cannot take codes directly: they are filled
   in an `IndexIVFPQ` and converted to the SIMD block layout, `IndexIVFPQFastScan(ivf)`.
   Adding the decoded rows instead gives the same codes when no two centroids of a
   subspace are equal; the codes themselves need no such luck.)
3. a query scores the centroids, scans the items of its `nprobe` best lists with faiss's
   4-bit fast scan (lookup tables rounded to 8 bits), shortlists `refine` candidates, and
   rescores them exactly from the float lookup tables (`PQTable.lookup_tables` /
   `PQTable.scores`, the arithmetic of `service.code_scorer.CodeScorer`'s rerank), so an item
   found here scores exactly what the exhaustive scorer gives it, and
   `AnnConfig.exhaustive()` answers exactly `CodeScorer.top_k`.

Banned items, padding (row 0 is in no list) and the interface (`top_k`, `search`,
`with_nprobe`) are `service.ann.AnnIndex`'s. Default `nprobe` and
`refine`, and what they cost, are measured in docs/decisions/2026-12-06-pq4-ann.md
(`python -m benchmarks.catalog pq-ann`).
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from bundle.pq import PQ_BITS, PQTable
from service.ann import (
    ADD_CHUNK_ROWS,
    KMEANS_ITERATIONS,
    MIN_TRAIN_POINTS,
    TRAIN_POINTS_PER_LIST,
    AnnConfig,
    AnnIndex,
)
from service.code_scorer import faiss_centroids

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


class CodeAnnIndex(AnnIndex):
    """An IVF inner-product index over a pq4 table's rows 1..n_items, holding their codes.

    Build with `CodeAnnIndex(table, config)`; searched like `AnnIndex`. It shares only the
    search with `AnnIndex`: its lists are built from the codes, not from dense rows."""

    def __init__(self, table: PQTable, config: AnnConfig | None = None) -> None:
        config = config or AnnConfig()
        if table.rows < 2:
            raise ValueError(f"a pq4 table of {table.rows} rows has no items")
        faiss.omp_set_num_threads(config.threads)
        t0 = time.perf_counter()
        self.config = config
        self.table = table  # the bundle's codes and codebooks: the rescoring reads them
        self.n_items = table.rows - 1
        self.dim = table.dim
        self.nlist = config.lists_for(self.n_items)
        self._quantizer = faiss.IndexFlatIP(self.dim)  # the IVF index does not own it
        ivf = faiss.IndexIVFPQ(
            self._quantizer, self.dim, self.nlist, table.m, PQ_BITS, faiss.METRIC_INNER_PRODUCT
        )
        ivf.by_residual = False  # a code is the item's own vector, as in the bundle
        self._train_lists(ivf)
        faiss.copy_array_to_vector(faiss_centroids(table).ravel(), ivf.pq.centroids)
        ivf.is_trained = True
        coarse = ivf.sa_code_size() - ivf.code_size  # bytes of an IVF code's list number
        for start in range(1, self.n_items + 1, ADD_CHUNK_ROWS):
            rows = np.arange(start, min(start + ADD_CHUNK_ROWS, self.n_items + 1))
            _, lists = self._quantizer.search(table.decode(rows), 1)  # the chunk is dropped
            # Labels are the catalog rows themselves: search answers need no translation.
            ivf.add_sa_codes(_sa_codes(lists[:, 0], table.packed[rows], coarse), rows)
        # faiss converts the lists to its SIMD block layout; `ivf` is dropped with this frame
        self._index: Any = faiss.IndexIVFPQFastScan(ivf)
        self.build_s = time.perf_counter() - t0

    def _train_lists(self, ivf: faiss.IndexIVFPQ) -> None:
        """k-means of the coarse quantizer on a sample of decoded rows, with the settings
        faiss's IVF training uses (`ivf.cp`: spherical for inner product) and those of
        `service.ann`. A small catalog is sampled with repeats so k-means has points."""
        rng = np.random.default_rng(self.config.seed)
        n_train = max(min(self.n_items, self.nlist * TRAIN_POINTS_PER_LIST), MIN_TRAIN_POINTS)
        sample = np.sort(rng.choice(self.n_items, size=n_train, replace=n_train > self.n_items))
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = self.config.seed
        kmeans = faiss.Clustering(self.dim, self.nlist, ivf.cp)
        kmeans.train(self.table.decode(sample + 1), self._quantizer)

    def _exact_scores(self, users: F32, rows: I64) -> F32:
        """(B, dim) users and (B, W) catalog rows (-1 = none) -> (B, W) exact scores from
        the float lookup tables, as `CodeScorer` computes them; -inf where there is no row."""
        present = rows >= 1
        exact = self.table.scores(self.table.lookup_tables(users), np.where(present, rows, 0))
        exact[~present] = -np.inf
        return exact

    def held_codes(self) -> tuple[I64, U8]:
        """Every catalog row in the lists and its packed codes as held there (faiss's block
        layout unpacked), list by list: for checks, it copies every code."""
        invlists = self._index.invlists
        packer = self._index.get_CodePacker()
        packer.this.own(True)  # a new object the caller frees
        rows: list[I64] = []
        codes: list[U8] = []
        for list_no in range(self.nlist):
            n = invlists.list_size(list_no)
            if n == 0:
                continue
            n_blocks = -(-n // packer.nvec)  # whole blocks of nvec codes each
            blocks = faiss.rev_swig_ptr(invlists.get_codes(list_no), n_blocks * packer.block_size)
            rows.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), n).astype(np.int64))
            codes += [packer.unpack_1(blocks.reshape(n_blocks, -1), i) for i in range(n)]
        return np.concatenate(rows), np.stack(codes)


def build_for_codes(table: PQTable, *, min_items: int, config: AnnConfig) -> CodeAnnIndex | None:
    """The index a pq4 catalog of this size is served with, or None: the exhaustive scan of
    `CodeScorer` below `min_items` items."""
    if table.rows - 1 < min_items:
        return None
    return CodeAnnIndex(table, config)


def _sa_codes(lists: I64, packed: U8, coarse_size: int) -> U8:
    """faiss's standalone IVF codes: the list number in `coarse_size` little-endian bytes,
    then the item's packed PQ codes (faiss's 4-bit layout, the bundle's)."""
    out = np.empty((len(packed), coarse_size + packed.shape[1]), dtype=np.uint8)
    out[:, :coarse_size] = lists.astype("<i8")[:, None].view(np.uint8)[:, :coarse_size]
    out[:, coarse_size:] = packed
    return out
