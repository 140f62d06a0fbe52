"""The ANN index (`service.ann`): exact when searched exhaustively, never returns padding or
banned items, and finds the true top 10 on a clustered catalog with its default settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bundle import decode_items, encode_items
from service.ann import AnnConfig, AnnIndex, build_for_catalog
from service.scorer import Scorer
from service.settings import Settings
from tests.factories import clustered_items, clustered_users

N_ITEMS, DIM = 2000, 16


def exact_top_k(users: np.ndarray, stored: Any, scales: Any, k: int) -> np.ndarray:
    """numpy inner products against the dequantized matrix, padding excluded, best first."""
    scores = users @ decode_items(stored, scales).T
    scores[:, 0] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray]:
    return clustered_items(N_ITEMS, DIM, seed=0)


@pytest.fixture(scope="module")
def users(catalog: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    items, topic = catalog
    return clustered_users(items, topic, 64, seed=1)


@pytest.mark.parametrize("encoding", ["int8", "fp16", "fp32"])
def test_exhaustive_search_returns_exactly_the_exact_top_k(
    catalog: tuple[np.ndarray, np.ndarray], users: np.ndarray, encoding: str
) -> None:
    stored, scales = encode_items(catalog[0], encoding)  # type: ignore[arg-type]
    index = AnnIndex(stored, scales, AnnConfig(nlist=32).exhaustive())
    assert index.nlist == 32 and index.nprobe == 32
    idx, scores = index.search(users, 10)
    assert idx.dtype == np.int64 and scores.dtype == np.float32 and idx.shape == (64, 10)
    np.testing.assert_array_equal(idx, exact_top_k(users, stored, scales, 10))
    expected = np.take_along_axis(users @ decode_items(stored, scales).T, idx, axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


def test_with_nprobe_shares_the_index_and_can_scan_every_list(
    catalog: tuple[np.ndarray, np.ndarray], users: np.ndarray
) -> None:
    stored, scales = encode_items(catalog[0], "int8")
    narrow = AnnIndex(stored, scales, AnnConfig(nlist=64, nprobe=1))
    full = narrow.with_nprobe(64, refine=N_ITEMS)
    assert narrow.nprobe == 1 and full.nprobe == 64 and narrow.config.refine < N_ITEMS
    np.testing.assert_array_equal(full.search(users, 10)[0], exact_top_k(users, stored, scales, 10))
    # every list scanned, 4-bit codes shortlisting the default number of candidates: the
    # exact rescoring keeps nearly all of the true top 10
    shortlisted = narrow.with_nprobe(64)
    assert recall(shortlisted.search(users, 10)[0], exact_top_k(users, stored, scales, 10)) > 0.95
    with pytest.raises(ValueError, match="nprobe"):
        narrow.with_nprobe(0)


def test_padding_row_is_never_returned_even_when_it_scores_best(
    catalog: tuple[np.ndarray, np.ndarray], users: np.ndarray
) -> None:
    items = catalog[0].copy()
    items[0] = 100 * users.mean(axis=0)  # padding that would win every query
    index = AnnIndex(items, None, AnnConfig(nlist=16).exhaustive())
    idx, _ = index.search(users[:4], N_ITEMS)
    assert (idx >= 1).all()
    for row in idx:  # every real item exactly once
        np.testing.assert_array_equal(np.sort(row), np.arange(1, N_ITEMS + 1))


def test_fewer_items_than_k_are_padded_with_minus_one_and_minus_inf() -> None:
    items, _ = clustered_items(5, DIM, n_clusters=2, seed=3)
    index = AnnIndex(items, None, AnnConfig().exhaustive())
    idx, scores = index.search(np.ones((2, DIM), dtype=np.float32), 8)
    assert idx.shape == scores.shape == (2, 8)
    assert (np.sort(idx[:, :5], axis=1) == np.arange(1, 6)).all()
    assert (idx[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    empty_idx, empty_scores = index.search(np.ones((2, DIM), dtype=np.float32), 0)
    assert empty_idx.shape == empty_scores.shape == (2, 0)


def test_default_settings_find_the_true_top_10_on_a_clustered_catalog() -> None:
    items, topic = clustered_items(20_000, DIM, n_clusters=50, seed=7)
    stored, scales = encode_items(items, "int8")
    users = clustered_users(items, topic, 200, seed=8)
    index = AnnIndex(stored, scales, AnnConfig())  # the defaults of Settings
    assert index.nlist == 141 and index.nprobe == Settings.model_fields["ann_nprobe"].default
    found, _ = index.search(users, 10)
    assert recall(found, exact_top_k(users, stored, scales, 10)) >= 0.9


def test_item_matrix_and_scales_must_agree() -> None:
    items, _ = clustered_items(50, DIM, seed=2)
    stored, scales = encode_items(items, "int8")
    assert scales is not None
    with pytest.raises(ValueError, match="scales"):
        AnnIndex(stored, None)
    with pytest.raises(ValueError, match="scales"):
        AnnIndex(items, scales)
    with pytest.raises(ValueError, match="scales"):
        AnnIndex(stored, scales[:-1])
    index = AnnIndex(stored, scales)
    with pytest.raises(ValueError, match="users"):
        index.search(np.ones((2, DIM + 1), dtype=np.float32), 3)


def test_catalogs_below_ann_min_items_are_scored_exactly(
    make_settings: Callable[..., Settings],
) -> None:
    items, _ = clustered_items(300, DIM, seed=2)
    config = AnnConfig.from_settings(make_settings(ann_nprobe=3))
    assert build_for_catalog(items, None, min_items=301, config=config) is None
    index = build_for_catalog(items, None, min_items=300, config=config)
    assert index is not None and index.n_items == 300 and index.nprobe == 3
    assert index.nlist == 17  # round(sqrt(300))


def test_ann_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.ann_min_items, defaults.ann_nlist, defaults.ann_nprobe) == (200_000, 0, 64)
    for name, value in {"ANN_MIN_ITEMS": "1000", "ANN_NLIST": "64", "ANN_NPROBE": "8"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ANN_THREADS", "2")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert AnnConfig.from_settings(s) == AnnConfig(nlist=64, nprobe=8, threads=2)
    assert s.ann_min_items == 1000


def test_top_k_is_a_drop_in_for_the_exact_scorer_when_exhaustive(
    catalog: tuple[np.ndarray, np.ndarray], users: np.ndarray
) -> None:
    stored, scales = encode_items(catalog[0], "int8")
    ann = AnnIndex(stored, scales, AnnConfig(nlist=32).exhaustive())
    scorer = Scorer(stored, scales, precision="fp32")
    rng = np.random.default_rng(9)
    banned = [rng.integers(1, N_ITEMS + 1, size=int(n)) for n in rng.integers(0, 40, len(users))]
    idx, scores = ann.top_k(users, banned, 10)
    want_idx, want_scores = scorer.top_k(users, banned, 10)
    assert idx.shape == scores.shape == (len(users), 10)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # More than the catalog: every item once, then -1 / -inf where the banned ones were.
    few = AnnIndex(stored[:21], scales[:21] if scales is not None else None, AnnConfig())
    idx, scores = few.top_k(users[:2], [np.array([3, 4]), np.empty(0, np.int64)], 50)
    assert idx.shape == (2, 20) and (idx[0, 18:] == -1).all() and np.isneginf(scores[0, 18:]).all()
    assert sorted(idx[1].tolist()) == list(range(1, 21))
