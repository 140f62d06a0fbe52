from __future__ import annotations

import numpy as np
import pytest

from bundle import decode_items, encode_items
from service.scorer import EXACT_F32_DIM, FUSED_MIN_BATCH, GROUP, Scorer


def catalog(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 items, scales, their fp32 decoding); row 0 is padding (zeros)."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((rows, dim)).astype(np.float32)
    dense[0] = 0
    q, scales = encode_items(dense, "int8")
    assert scales is not None
    return q, scales, decode_items(q, scales)


def exact_top_k(scores: np.ndarray, banned: list[np.ndarray], k: int) -> np.ndarray:
    scores = scores.copy()
    scores[:, 0] = -np.inf
    for row, b in enumerate(banned):
        scores[row, b] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(
    ("rows", "k"),
    [(7, 3), (GROUP, 5), (GROUP + 1, 10), (1000, 10), (1000, 200), (5000, 1000), (40, 100)],
)
def test_fp32_top_k_is_the_exact_top_k(rows, k):
    _, _, dense = catalog(rows, 8, seed=rows)
    scorer = Scorer(dense, None)
    rng = np.random.default_rng(k)
    users = rng.standard_normal((5, 8)).astype(np.float32)
    banned = [rng.integers(1, rows, size=n) for n in (0, 1, 3, 6, 2)]
    idx, scores = scorer.top_k(users, banned, k)
    expected = exact_top_k(users @ dense.T, banned, k)
    for row in range(5):
        finite = np.isfinite(scores[row])
        allowed = rows - 1 - len(set(banned[row].tolist()))
        assert finite.sum() == min(k, allowed)
        assert set(idx[row][finite].tolist()) == set(expected[row][: finite.sum()].tolist())
        assert np.all(np.diff(scores[row][finite]) <= 0)  # best first


@pytest.mark.parametrize("n_users", [4, FUSED_MIN_BATCH + 3], ids=["small_batch", "fused_batch"])
def test_int8_top_k_is_exact_on_its_own_scores_and_matches_score(n_users):
    q, scales, _ = catalog(3000, 16, seed=1)
    scorer = Scorer(q, scales)
    assert scorer.precision == "int8"
    rng = np.random.default_rng(2)
    users = rng.standard_normal((n_users, 16)).astype(np.float32)
    banned = [rng.integers(1, 3000, size=5) for _ in range(n_users)]
    idx, scores = scorer.top_k(users, banned, 50)
    every_row = np.arange(3000)
    own = np.stack([scorer.score(u, every_row) for u in users])  # the same int8 arithmetic
    expected = exact_top_k(own, banned, 50)
    for row in range(n_users):
        assert set(idx[row].tolist()) == set(expected[row].tolist())
        # reranking a row's items gives bit-identical scores to the full-catalog path
        np.testing.assert_array_equal(scorer.score(users[row], idx[row]), scores[row])


@pytest.mark.parametrize("dim", [EXACT_F32_DIM, EXACT_F32_DIM + 1])
def test_reranking_reproduces_the_graph_s_int8_scores_on_both_sides_of_the_float32_width(dim):
    q, scales, _ = catalog(300, dim, seed=3)
    scorer = Scorer(q, scales)
    user = np.random.default_rng(4).standard_normal(dim).astype(np.float32)
    idx, scores = scorer.top_k(user[None, :], [np.array([], dtype=np.int64)], 20)
    np.testing.assert_array_equal(scorer.score(user, idx[0]), scores[0])


def test_int8_scores_stay_close_to_fp32_and_agree_on_the_top_10():
    q, scales, dense = catalog(20000, 48, seed=3)
    users = np.random.default_rng(4).standard_normal((64, 48)).astype(np.float32)
    no_ban = [np.empty(0, dtype=np.int64)] * 64
    idx8, s8 = Scorer(q, scales).top_k(users, no_ban, 10)
    idx32, _ = Scorer(q, scales, precision="fp32").top_k(users, no_ban, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx8, idx32, strict=True)])
    assert overlap >= 0.9  # random vectors: near-ties everywhere, the worst case
    # 7-bit users: each score is within half a step times the item's L1 norm
    l1 = np.abs(dense[idx8]).sum(axis=2)
    step = np.abs(users).max(axis=1, keepdims=True) / 63
    exact = np.einsum("bd,bkd->bk", users, dense[idx8])
    assert np.all(np.abs(s8 - exact) <= 0.5 * step * l1 + 1e-4)


def test_a_user_s_answer_does_not_depend_on_the_rest_of_the_batch():
    """Alone, in a small batch and in a large one (the fused graph): the same answer."""
    q, scales, _ = catalog(5000, 32, seed=5)
    scorer = Scorer(q, scales)
    rng = np.random.default_rng(6)
    n = 2 * FUSED_MIN_BATCH
    users = rng.standard_normal((n, 32)).astype(np.float32)
    banned = [rng.integers(1, 5000, size=int(b)) for b in rng.integers(0, 20, size=n)]
    idx, scores = scorer.top_k(users, banned, 10)
    small_idx, small_scores = scorer.top_k(users[:3], banned[:3], 10)
    np.testing.assert_array_equal(small_idx, idx[:3])
    np.testing.assert_array_equal(small_scores, scores[:3])
    for row in range(n):
        one_idx, one_scores = scorer.top_k(users[row : row + 1], [banned[row]], 10)
        np.testing.assert_array_equal(one_idx[0], idx[row])
        np.testing.assert_array_equal(one_scores[0], scores[row])


def test_fp16_items_are_scored_in_fp32():
    _, _, dense = catalog(500, 8, seed=7)
    scorer = Scorer(dense.astype(np.float16), None)
    assert scorer.precision == "fp32"
    user = np.ones((1, 8), dtype=np.float32)
    idx, _ = scorer.top_k(user, [np.empty(0, dtype=np.int64)], 5)
    expected = exact_top_k(user @ dense.astype(np.float16).astype(np.float32).T, [[]], 5)
    assert set(idx[0].tolist()) == set(expected[0].tolist())


def test_int8_items_without_scales_are_refused():
    q, _, _ = catalog(10, 4, seed=8)
    with pytest.raises(ValueError, match="scales"):
        Scorer(q, None)
