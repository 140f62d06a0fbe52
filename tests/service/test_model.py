from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundle import decode_items, read_bundle
from service.ann import AnnConfig
from service.loading import load_model
from service.model import LoadedModel, ModelOptions, RecRequest, length_groups
from tests.factories import BundleSpec, make_bundle_dir, reference_user_vector

SPEC = BundleSpec(version="r1", n_items=60, dim=8, max_len=12, seed=3)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle_dir(tmp_path_factory.mktemp("runner") / "b", SPEC)


@pytest.fixture(scope="module")
def model(bundle_dir: Path) -> LoadedModel:
    return load_model(bundle_dir)


def reference_scores(bundle_dir: Path, history_idx: list[int]) -> np.ndarray:
    """Scores of every item row (numpy twin of encoder + dequantized matrix)."""
    b = read_bundle(bundle_dir)
    return decode_items(b.items, b.item_scales) @ reference_user_vector(SPEC, history_idx)


def test_recommend_returns_k_items_best_first_matching_the_reference(model, bundle_dir):
    rec = model.recommend(RecRequest(history=["i5", "i9", "i2"], k=10))
    assert rec.strategy == "model" and rec.model_version == "r1"
    assert len(rec.item_ids) == 10
    assert rec.scores == sorted(rec.scores, reverse=True)
    ref = reference_scores(bundle_dir, [5, 9, 2])
    ref[[0, 5, 9, 2]] = -np.inf
    expected = [f"i{i}" for i in np.argsort(-ref, kind="stable")[:10]]
    assert rec.item_ids == expected
    # int8 scoring quantizes the user vector to 7 bits: each score is off by at most half a
    # user step times the item row's L1 norm.
    user = reference_user_vector(SPEC, [5, 9, 2])
    b = read_bundle(bundle_dir)
    rows = np.array([int(i[1:]) for i in rec.item_ids])
    l1 = np.abs(decode_items(b.items, b.item_scales)[rows]).sum(axis=1)
    bound = 0.5 * np.abs(user).max() / 63 * l1 + 1e-5
    assert np.all(np.abs(np.array(rec.scores) - ref[rows]) <= bound)


def test_fp32_scoring_gives_the_pipeline_s_exact_scores(bundle_dir):
    model = load_model(bundle_dir, ModelOptions(scoring_precision="fp32"))
    rec = model.recommend(RecRequest(history=["i5", "i9", "i2"], k=10))
    ref = reference_scores(bundle_dir, [5, 9, 2])
    ref[[0, 5, 9, 2]] = -np.inf
    assert rec.item_ids == [f"i{i}" for i in np.argsort(-ref, kind="stable")[:10]]
    np.testing.assert_allclose(rec.scores, np.sort(ref)[::-1][:10], rtol=1e-4, atol=1e-4)


def test_seen_items_are_excluded_by_default_and_kept_on_request(model):
    history = ["i1", "i2", "i3"]
    everything = model.n_items
    seen_out = model.recommend(RecRequest(history=history, k=everything))
    assert not set(history) & set(seen_out.item_ids)
    assert len(seen_out.item_ids) == everything - 3
    seen_in = model.recommend(RecRequest(history=history, k=everything, exclude_seen=False))
    assert set(history) <= set(seen_in.item_ids)
    assert len(seen_in.item_ids) == everything


def test_excluded_items_are_never_returned(model):
    top = model.recommend(RecRequest(history=["i4"], k=3)).item_ids
    rec = model.recommend(RecRequest(history=["i4"], k=3, exclude=[*top, "unknown"]))
    assert not set(top) & set(rec.item_ids)
    assert len(rec.item_ids) == 3


def test_unknown_history_ids_are_dropped_and_counted(model):
    with_unknown = model.recommend(RecRequest(history=["x1", "i4", "x2"], k=5))
    plain = model.recommend(RecRequest(history=["i4"], k=5))
    assert with_unknown.unknown_history == 2
    assert with_unknown.item_ids == plain.item_ids


@pytest.mark.parametrize("history", [[], ["nope", "never"]])
def test_empty_or_all_unknown_history_falls_back_to_popularity(model, history):
    rec = model.recommend(RecRequest(history=history, k=4, exclude=["i2"]))
    assert rec.strategy == "popular"
    assert rec.item_ids == ["i1", "i3", "i4", "i5"]  # factory popularity: i1 > i2 > i3 ...
    assert rec.scores == sorted(rec.scores, reverse=True)
    assert rec.unknown_history == len(history)


def test_long_history_keeps_the_most_recent_max_len_items(model):
    history = [f"i{i}" for i in range(1, 31)]  # 30 items, max_len 12
    long = model.recommend(RecRequest(history=history, k=8, exclude_seen=False))
    recent = model.recommend(RecRequest(history=history[-12:], k=8, exclude_seen=False))
    assert long.item_ids == recent.item_ids


def test_candidates_are_reranked_and_unknown_ones_reported(model, bundle_dir):
    cands = ["i10", "i20", "zzz", "i30", "i10", "i40", "i4"]
    rec = model.recommend(RecRequest(history=["i4", "i7"], k=10, candidates=cands))
    assert rec.strategy == "model"
    assert rec.unknown_candidates == 1
    assert sorted(rec.item_ids) == ["i10", "i20", "i30", "i40"]  # deduped; seen i4 removed
    ref = reference_scores(bundle_dir, [4, 7])
    assert rec.item_ids == [f"i{i}" for i in sorted([10, 20, 30, 40], key=lambda i: -ref[i])]


def test_candidate_scores_equal_full_catalog_scores(model):
    full = model.recommend(RecRequest(history=["i3"], k=5))
    reranked = model.recommend(RecRequest(history=["i3"], k=5, candidates=full.item_ids[::-1]))
    assert reranked.item_ids == full.item_ids
    np.testing.assert_allclose(reranked.scores, full.scores, rtol=1e-6)


def test_candidate_rerank_never_scores_the_whole_catalog(model, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("full-catalog scoring on the candidate path")

    monkeypatch.setattr(model._scorer, "top_k", fail)
    rec = model.recommend(RecRequest(history=["i3"], k=2, candidates=["i1", "i2", "i9"]))
    assert len(rec.item_ids) == 2


def test_popularity_fallback_ranks_candidates_by_popularity(model):
    rec = model.recommend(RecRequest(history=[], k=5, candidates=["i9", "i2", "i5", "bad"]))
    assert rec.strategy == "popular"
    assert rec.item_ids == ["i2", "i5", "i9"]
    assert rec.unknown_candidates == 1


def test_k_larger_than_the_catalog_returns_every_allowed_item(model):
    rec = model.recommend(RecRequest(history=["i1"], k=1000))
    assert len(rec.item_ids) == model.n_items - 1
    assert "" not in rec.item_ids  # padding never leaks


def test_batched_requests_answer_like_single_requests(model):
    requests = [
        RecRequest(history=["i1", "i2"], k=5),
        RecRequest(history=[], k=3),
        RecRequest(history=["i8"], k=4, candidates=["i1", "i2", "i3", "i9", "i11"]),
        RecRequest(history=["i50", "unknown"], k=6, exclude=["i1"]),
    ]
    batched = model.recommend_batch(requests)
    single = [model.recommend(r) for r in requests]
    for b, s in zip(batched, single, strict=True):
        assert b.item_ids == s.item_ids
        np.testing.assert_allclose(b.scores, s.scores, rtol=1e-5, atol=1e-6)
        assert (b.strategy, b.unknown_history, b.unknown_candidates) == (
            s.strategy,
            s.unknown_history,
            s.unknown_candidates,
        )


@pytest.mark.parametrize("encoding", ["fp16", "fp32"])
def test_fp16_and_fp32_item_matrices_rank_like_the_reference(tmp_path, encoding):
    spec = BundleSpec(version=f"e-{encoding}", item_encoding=encoding, seed=3)
    d = make_bundle_dir(tmp_path / encoding, spec)
    rec = load_model(d).recommend(RecRequest(history=["i5", "i9"], k=5))
    b = read_bundle(d)
    ref = decode_items(b.items, b.item_scales) @ reference_user_vector(spec, [5, 9])
    ref[[0, 5, 9]] = -np.inf
    assert rec.item_ids == [f"i{i}" for i in np.argsort(-ref, kind="stable")[:5]]


def test_large_catalogs_answer_from_the_ann_index_exactly_when_searched_exhaustively(bundle_dir):
    exact = load_model(bundle_dir, ModelOptions(scoring_precision="fp32"))
    options = ModelOptions(
        scoring_precision="fp32", ann_min_items=10, ann=AnnConfig(nlist=4).exhaustive()
    )
    approx = load_model(bundle_dir, options)
    assert approx.approximate and not exact.approximate
    for history in (["i5", "i9", "i2"], ["i40"], ["i1", "i2", "i3", "i4"]):
        request = RecRequest(history=history, k=10, exclude=["i7"])
        want, got = exact.recommend(request), approx.recommend(request)
        assert got.item_ids == want.item_ids
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
        assert not {"i7", *history} & set(got.item_ids)


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([50, 3, 4, 2, 5, 3, 4, 2], [[0], [3, 7, 1, 5, 2, 6, 4]]),  # one long history: 2 calls
        ([7, 7, 7, 7], [[0, 1, 2, 3]]),  # nothing to save
        ([2, 50], [[0, 1]]),  # 48 padded positions do not pay for a call
        ([1], [[0]]),
    ],
)
def test_length_groups_split_off_long_histories_only_when_it_pays(lengths, expected):
    assert length_groups(lengths, call_cost=85) == expected


def test_length_groups_cover_every_row_once_and_never_pad_more_than_one_group():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 51, size=int(rng.integers(1, 33))).tolist()
        groups = length_groups(lengths)
        assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
        padded = sum(len(g) * max(lengths[r] for r in g) for g in groups)
        calls = len(groups) - 1
        assert padded + 85 * calls <= len(lengths) * max(lengths)


def test_a_batch_split_by_history_length_answers_like_single_requests(model, monkeypatch):
    long = [f"i{i}" for i in range(1, model.max_len + 1)]  # 12: the test bundle's max_len
    requests = [RecRequest(history=long, k=5)] + [
        RecRequest(history=[f"i{i}", f"i{i + 1}"], k=5) for i in range(20, 60, 4)
    ]
    widths: list[tuple[int, int]] = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda seqs: widths.append(seqs.shape) or encode(seqs))
    batched = model.recommend_batch(requests)
    # 11 x 12 positions in one call, or 12 + 10 x 2 in two: the split saves 100 > 85
    assert sorted(widths) == [(1, 12), (10, 2)]
    monkeypatch.setattr(model, "encode", encode)
    for b, r in zip(batched, requests, strict=True):
        s = model.recommend(r)
        assert b.item_ids == s.item_ids
        np.testing.assert_allclose(b.scores, s.scores, rtol=1e-5, atol=1e-6)
