"""The IVF index over a pq4 table's codes (`service.code_ann`): searched exhaustively it
answers exactly what `CodeScorer` answers, it never returns padding or banned items, it
holds the bundle's codes and no float table, and its defaults find the true top 10."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from bundle import PQTable
from service.ann import AnnConfig
from service.code_ann import CodeAnnIndex, build_for_codes
from service.code_scorer import CodeScorer, faiss_centroids
from service.settings import Settings
from tests.factories import clustered_items, clustered_users, pq_table

N_ITEMS, DIM, M = 3000, 32, 8


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def catalog() -> tuple[PQTable, np.ndarray]:
    """A clustered catalog's pq4 table (padding row included) and users of its topics."""
    items, topic = clustered_items(N_ITEMS, DIM, seed=0)
    return pq_table(items, m=M, iters=4), clustered_users(items, topic, 48, seed=1)


@pytest.mark.parametrize("k", [10, 100])
def test_exhaustive_search_answers_exactly_what_the_code_scorer_answers(
    catalog: tuple[PQTable, np.ndarray], k: int
) -> None:
    table, users = catalog
    rng = np.random.default_rng(k)
    banned = [rng.integers(1, N_ITEMS + 1, size=int(n)) for n in rng.integers(0, 30, size=48)]
    index = CodeAnnIndex(table, AnnConfig(nlist=24).exhaustive())
    assert index.nlist == 24 and index.nprobe == 24
    idx, scores = index.top_k(users, banned, k)
    want_idx, want_scores = CodeScorer(table).top_k(users, banned, k)
    # the same items in the same order (equal scores: lower row first) and the same floats
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(scores, want_scores)


def test_banned_items_and_padding_never_come_back() -> None:
    items, topic = clustered_items(2000, DIM, seed=2)
    users = clustered_users(items, topic, 16, seed=3)
    items[0] = 100 * users.mean(axis=0)  # padding whose codes would win every query
    table = pq_table(items, m=M, iters=3)
    index = CodeAnnIndex(table, AnnConfig(nlist=16).exhaustive())
    every, _ = index.search(users, 2000)
    for row in every:  # every real item exactly once, never row 0
        np.testing.assert_array_equal(np.sort(row), np.arange(1, 2001))
    truth, _ = CodeScorer(table).top_k(users, [[]] * 16, 15)
    banned = [truth[r, : 5 + r % 4] for r in range(16)]  # each user's own best items
    found, scores = CodeAnnIndex(table, AnnConfig(nlist=16, nprobe=2)).top_k(users, banned, 10)
    for r in range(16):
        kept = found[r][np.isfinite(scores[r])]
        assert len(kept) and (kept >= 1).all() and not np.isin(kept, banned[r]).any()


def test_the_index_holds_the_bundles_codes_and_no_float_table() -> None:
    items, _ = clustered_items(20_000, 64, seed=4)
    table = pq_table(items, m=16, iters=2)
    index = CodeAnnIndex(table, AnnConfig())
    rows, codes = index.held_codes()
    order = np.argsort(rows)
    np.testing.assert_array_equal(rows[order], np.arange(1, 20_001))  # each item once
    np.testing.assert_array_equal(codes[order], table.packed[1:])  # its codes, unchanged
    assert index.table is table  # the rescoring reads the bundle's own arrays
    assert not [v for v in vars(index).values() if isinstance(v, np.ndarray)]
    dense_bytes = table.rows * table.dim * 4
    assert len(faiss.serialize_index(index._index)) < 0.1 * dense_bytes  # codes + centroids


def test_faiss_encodes_a_decoded_row_to_the_bundles_codes_while_centroids_differ(
    catalog: tuple[PQTable, np.ndarray],
) -> None:
    """Why adding decoded rows would also work, and why the index adds the codes instead."""
    table = catalog[0]
    pq = faiss.ProductQuantizer(table.dim, table.m, 4)
    faiss.copy_array_to_vector(faiss_centroids(table).ravel(), pq.centroids)
    np.testing.assert_array_equal(pq.compute_codes(table.decode()), table.packed)
    twin = table.codebooks.copy()
    twin[0, 1] = twin[0, 0]  # two equal centroids: code 1 decodes like code 0
    packed = table.packed.copy()
    packed[:, 0] = (packed[:, 0] & 0xF0) | 1  # every item's first code points at 1
    ambiguous = PQTable(packed, twin)
    faiss.copy_array_to_vector(faiss_centroids(ambiguous).ravel(), pq.centroids)
    assert not np.array_equal(pq.compute_codes(ambiguous.decode()), ambiguous.packed)
    rows, codes = CodeAnnIndex(ambiguous, AnnConfig(nlist=8)).held_codes()
    np.testing.assert_array_equal(codes[np.argsort(rows)], ambiguous.packed[1:])


def test_default_settings_find_the_true_top_10_on_a_clustered_catalog() -> None:
    items, topic = clustered_items(20_000, DIM, n_clusters=50, seed=7)
    table = pq_table(items, m=M, iters=3)
    users = clustered_users(items, topic, 200, seed=8)
    index = CodeAnnIndex(table, AnnConfig())  # the defaults of Settings
    assert index.nlist == 141 and index.nprobe == Settings.model_fields["ann_nprobe"].default
    truth, _ = CodeScorer(table).top_k(users, [[]] * 200, 10)
    found, _ = index.search(users, 10)
    assert recall(found, truth) >= 0.9


def test_fewer_items_than_k_are_padded_and_small_catalogs_are_not_indexed() -> None:
    items, _ = clustered_items(5, DIM, n_clusters=2, seed=5)
    table = pq_table(items, m=M, iters=2, k=4)  # 4 centroids per subspace
    index = CodeAnnIndex(table, AnnConfig().exhaustive())
    idx, scores = index.search(np.ones((2, DIM), dtype=np.float32), 8)
    assert (np.sort(idx[:, :5], axis=1) == np.arange(1, 6)).all()
    assert (idx[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert build_for_codes(table, min_items=6, config=AnnConfig()) is None
    assert isinstance(build_for_codes(table, min_items=5, config=AnnConfig()), CodeAnnIndex)
