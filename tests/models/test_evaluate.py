from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluate import (
    evaluate,
    measure_latency,
    metrics_from_ranks,
    popularity_stage,
    ranks_from_scores,
)
from models.split import EvalSet


def h(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


def test_rank_removes_padding_and_seen_items_but_never_the_target() -> None:
    #                 pad   1    2    3    4    5
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert ranks_from_scores(scores, h(3), [h()]).tolist() == [2]  # items 1, 2 above
    assert ranks_from_scores(scores, h(3), [h(1)]).tolist() == [1]  # seen 1 removed
    assert ranks_from_scores(scores, h(3), [h(1, 2)]).tolist() == [0]
    assert ranks_from_scores(scores, h(3), [h(3, 1)]).tolist() == [1]  # target stays


def test_ties_are_broken_by_item_index() -> None:
    scores = np.array([[0.0, 1.0, 1.0, 1.0]])
    assert ranks_from_scores(scores, h(1), [h()]).tolist() == [0]
    assert ranks_from_scores(scores, h(3), [h()]).tolist() == [2]


def test_metrics_match_hand_computed_values() -> None:
    ranks = np.array([0, 1, 4, 12])  # 0-based ranks
    m = metrics_from_ranks(ranks, ks=(1, 5, 10))
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(3 / 4)
    assert m["hr@10"] == pytest.approx(3 / 4)
    # NDCG = 1 / log2(1-based rank + 1)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)


def test_evaluate_ranks_full_catalog_with_a_dot_product_encoder() -> None:
    items = np.eye(5, dtype=np.float32)  # item i scores user_vec[i]
    users = np.array([[0, 5, 4, 3, 1], [0, 1, 2, 3, 4]], dtype=np.float32)
    eval_set = EvalSet([h(1), h(4, 3)], h(2, 1))

    def encode(seq: np.ndarray) -> np.ndarray:
        # The second user's history has 2 items, the first 1: pick the row by length.
        return users[(seq > 0).sum(1) - 1]

    m = evaluate(encode, items, eval_set, max_len=4, ks=(1, 2))
    # user 0: seen {1}; target 2 has the top unseen score -> rank 0
    # user 1: seen {3, 4}; scores 1 < 2: target 1 is behind item 2 -> rank 1
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["hr@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["mrr@2"] == pytest.approx(0.75)
    assert m == evaluate(encode, items, eval_set, max_len=4, ks=(1, 2), trim=False)


def test_popularity_baseline_uses_the_same_code() -> None:
    pop = np.array([0, 10, 50, 30, 20], dtype=np.int64)
    encode, items = popularity_stage(pop)
    eval_set = EvalSet([h(2), h(1)], h(3, 2))
    m = evaluate(encode, items, eval_set, max_len=3, ks=(1,))
    assert m["hr@1"] == pytest.approx(1.0)  # 3 is the most popular unseen for both


def test_sampled_metrics_are_labelled_and_not_worse_than_full() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    eval_set = EvalSet([h(int(i)) for i in rng.integers(1, 300, 50)], rng.integers(1, 300, 50))

    def encode(seq: np.ndarray) -> np.ndarray:
        return items[seq[:, -1]]

    for kind in ("uniform", "popularity"):
        m = evaluate(encode, items, eval_set, max_len=5, sampled=kind, popularity=np.arange(300))
        assert m[f"sampled_{kind}_hr@10"] >= m["hr@10"]
        assert set(m) >= {"hr@10", "ndcg@10", "mrr@10", f"sampled_{kind}_ndcg@10"}


def test_measure_latency_reports_both_batch_sizes() -> None:
    out = measure_latency(
        lambda x: np.zeros((len(x), 2), np.float32), h(1, 2)[None, :], budget_s=0.01
    )
    assert set(out) == {"latency_us_b1", "latency_us_per_row_b32"}
    assert all(v > 0 for v in out.values())
