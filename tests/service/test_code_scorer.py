from __future__ import annotations

import numpy as np
import pytest

from bundle import PQTable
from service.code_scorer import CodeScorer
from tests.factories import pq_table


def table(rows: int = 3000, dim: int = 32, m: int = 8, seed: int = 0) -> PQTable:
    matrix = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return pq_table(matrix, m=m, iters=3, seed=seed)


def brute_force(t: PQTable, users: np.ndarray, banned: list[np.ndarray], k: int) -> np.ndarray:
    """The exact top k over the decoded table (what scoring from the codes must reproduce)."""
    scores = users @ t.decode().T
    scores[:, 0] = -np.inf
    for row, b in enumerate(banned):
        scores[row, b] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(("rows", "k"), [(3000, 10), (3000, 100), (40, 10), (40, 60)])
def test_top_k_from_the_codes_is_the_exact_top_k_of_the_decoded_table(rows: int, k: int) -> None:
    t = table(rows=rows)
    scorer = CodeScorer(t)
    rng = np.random.default_rng(k)
    users = rng.standard_normal((20, t.dim)).astype(np.float32)
    banned = [rng.integers(1, rows, size=int(n)) for n in rng.integers(0, 30, size=20)]
    idx, scores = scorer.top_k(users, banned, k)
    want = brute_force(t, users, banned, k)
    for row in range(20):
        finite = np.isfinite(scores[row])
        allowed = rows - 1 - len(set(banned[row].tolist()))
        assert finite.sum() == min(k, allowed)
        assert idx[row][finite].tolist() == want[row][: finite.sum()].tolist()
        assert np.all(np.diff(scores[row][finite]) <= 0)
        np.testing.assert_allclose(
            scores[row][finite], users[row] @ t.decode(idx[row][finite]).T, rtol=1e-5, atol=1e-5
        )


def test_an_answer_is_the_same_alone_and_in_any_batch_and_reranking_agrees() -> None:
    t = table()
    scorer = CodeScorer(t)
    rng = np.random.default_rng(1)
    users = rng.standard_normal((33, t.dim)).astype(np.float32)
    banned = [rng.integers(1, t.rows, size=5) for _ in range(33)]
    idx, scores = scorer.top_k(users, banned, 10)
    for row in range(33):
        one_idx, one_scores = scorer.top_k(users[row : row + 1], [banned[row]], 10)
        np.testing.assert_array_equal(one_idx[0], idx[row])
        np.testing.assert_array_equal(one_scores[0], scores[row])
        np.testing.assert_array_equal(scorer.score(users[row], idx[row]), scores[row])


def test_a_shortlist_the_rounding_bound_cannot_certify_is_widened_until_exact() -> None:
    """A centroid no item uses, far out, makes every table's span (so the scan's rounding
    step) huge: the shortlist cannot be certified and is widened up to the whole catalog,
    which is exact."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 15, size=(2000, 4))  # code 15 unused
    codebooks = rng.standard_normal((4, 16, 2)).astype(np.float32)
    codebooks[:, 15] = 1e4
    t = PQTable.from_codes(codes, codebooks)
    users = rng.standard_normal((6, t.dim)).astype(np.float32)
    no_ban = [np.empty(0, dtype=np.int64)] * 6
    scorer = CodeScorer(t)
    widths = []
    search = scorer._index.search
    scorer._index = type("Spy", (), {"search": lambda _, u, w: widths.append(w) or search(u, w)})()
    idx, _ = scorer.top_k(users, no_ban, 5)
    assert len(widths) > 1 and widths[-1] > widths[0]  # widened at least once
    want = brute_force(t, users, no_ban, 5)
    exact = users @ t.decode().T
    for row in range(6):  # the same items, up to float-equal ties
        np.testing.assert_allclose(exact[row, idx[row]], exact[row, want[row]], rtol=0, atol=1e-6)


def test_the_scorer_keeps_no_dense_copy_of_the_table() -> None:
    t = table(rows=20_000, dim=64, m=16)
    scorer = CodeScorer(t)
    dense_bytes = t.rows * t.dim * 4
    held = sum(v.nbytes for v in vars(scorer).values() if isinstance(v, np.ndarray))
    held += t.nbytes + scorer._index.sa_code_size() * t.rows
    assert held < 0.2 * dense_bytes


def test_without_catalog_top_k_no_fast_scan_index_is_built_and_reranks_still_score() -> None:
    t = table(rows=500)
    reranker = CodeScorer(t, catalog_top_k=False)
    user = np.random.default_rng(3).standard_normal(t.dim).astype(np.float32)
    rows = np.array([4, 9, 2], dtype=np.int64)
    np.testing.assert_array_equal(reranker.score(user, rows), CodeScorer(t).score(user, rows))
    with pytest.raises(RuntimeError, match="fast-scan index"):
        reranker.top_k(user[None, :], [[]], 5)
