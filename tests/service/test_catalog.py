"""The live catalog layered over a loaded model: stored vectors encoded like the bundle's
table, unavailable items absent from every answer path, added items answered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundle import encode_items, unpack_int4
from service.ann import AnnConfig
from service.catalog import CatalogLayer, decode_rows, encode_vectors, pq_encode
from service.errors import InvalidCatalogChange
from service.loading import load_model
from service.model import LoadedModel, ModelOptions, RecRequest
from tests import factories as f

ENCODINGS = ["int8", "int4", "fp16", "fp32", "pq4"]
HISTORY = ["i3", "i9", "i14"]


def _model(tmp_path: Path, encoding: str, options: ModelOptions | None = None) -> LoadedModel:
    spec = f.BundleSpec(version=f"c-{encoding}", item_encoding=encoding, n_items=120, dim=8)
    return load_model(f.make_bundle_dir(tmp_path / encoding, spec), options)


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _user(model: LoadedModel, history: list[str]) -> np.ndarray:
    rows = [model.vocab.index(i) for i in history]
    seq = np.array([[0] * (model.max_len - len(rows)) + rows], dtype=np.int64)
    return model.encode(seq)[0]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_stored_vectors_decode_to_the_rows_the_bundle_encoding_gives(tmp_path, encoding):
    model = _model(tmp_path, encoding)
    vectors = _vectors(5, model.manifest.dim)
    ids = [f"new-{n}" for n in range(5)]
    stored = model.encode_vectors(ids, vectors)
    rows, skipped = decode_rows(model.manifest, model.pq, stored)
    assert skipped == [] and rows.ids == tuple(ids)
    if encoding == "pq4":
        assert model.pq is not None
        np.testing.assert_array_equal(rows.rows, pq_encode(model.pq, vectors))
        return
    want, scales = encode_items(vectors, encoding)  # type: ignore[arg-type]
    if encoding == "int4":
        want = unpack_int4(want)  # served as int8 rows, like the bundle's own
    np.testing.assert_array_equal(rows.rows, want)
    if scales is None:
        assert rows.scales is None
    else:
        np.testing.assert_array_equal(rows.scales, scales)


def test_pq_encoding_picks_the_nearest_centroid_of_every_subspace(tmp_path):
    model = _model(tmp_path, "pq4")
    assert model.pq is not None
    vectors = _vectors(50, model.manifest.dim, seed=3)
    table = type(model.pq)(pq_encode(model.pq, vectors), model.pq.codebooks)
    best = ((table.decode() - vectors) ** 2).sum()
    rng = np.random.default_rng(0)
    for _ in range(5):  # any other choice of codes reconstructs worse
        codes = rng.integers(0, model.pq.centroids, size=(50, model.pq.m))
        other = type(model.pq).from_codes(codes, model.pq.codebooks)
        assert ((other.decode() - vectors) ** 2).sum() > best


@pytest.mark.parametrize(
    ("ids", "vectors", "problem"),
    [
        (["a"], np.zeros((1, 7)), "have 8 values"),
        (["a"], np.full((1, 8), np.nan), "'a' is not finite"),
        (["a", "b"], np.array([[0.0] * 8, [np.inf] + [0.0] * 7]), "'b' is not finite"),
        (["a", "a"], np.zeros((2, 8)), "twice"),
        (["a", "b"], np.zeros((1, 8)), "2 item IDs for 1 vectors"),
    ],
)
def test_invalid_vectors_are_refused_naming_the_problem(tmp_path, ids, vectors, problem):
    model = _model(tmp_path, "int8")
    with pytest.raises(InvalidCatalogChange, match=problem):
        encode_vectors(model.manifest, model.pq, ids, vectors)


def test_fp16_refuses_a_vector_beyond_its_range(tmp_path):
    model = _model(tmp_path, "fp16")
    with pytest.raises(InvalidCatalogChange, match="range of fp16"):
        model.encode_vectors(["a"], np.full((1, 8), 1e6))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_unavailable_items_never_answer_on_any_path(tmp_path, encoding):
    model = _model(tmp_path, encoding)
    top = model.recommend(RecRequest(history=HISTORY, k=5)).item_ids
    popular = model.recommend(RecRequest(history=[], k=5)).item_ids
    gone = frozenset({*top[:3], *popular[:2], "never-heard-of"})
    live = model.with_catalog(CatalogLayer(revision=4, unavailable=gone))
    assert live.cache_tag == f"c-{encoding}@4" and live.base is model
    # full catalog: exactly what excluding them by hand gives
    got = live.recommend(RecRequest(history=HISTORY, k=10))
    want = model.recommend(RecRequest(history=HISTORY, k=10, exclude=sorted(gone)))
    assert got.item_ids == want.item_ids and not gone.intersection(got.item_ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    # reranking and the popularity fallback
    rerank = live.recommend(RecRequest(history=HISTORY, k=10, candidates=[*top, "i50"]))
    assert set(rerank.item_ids) == {*top[3:], "i50"}
    fallback = live.recommend(RecRequest(history=[], k=5))
    assert fallback.strategy == "popular" and not gone.intersection(fallback.item_ids)
    # a layer without them gives them back: layers replace, they do not stack
    again = live.with_catalog(CatalogLayer(revision=5))
    assert again.recommend(RecRequest(history=HISTORY, k=5)).item_ids == top


def test_unavailable_items_never_answer_from_the_ann_index(tmp_path):
    exhaustive = ModelOptions(ann_min_items=100, ann=AnnConfig(nlist=8).exhaustive())
    model = _model(tmp_path, "int8", exhaustive)
    assert model.approximate
    top = model.recommend(RecRequest(history=HISTORY, k=10)).item_ids
    live = model.with_catalog(CatalogLayer(revision=1, unavailable=frozenset(top[:4])))
    got = live.recommend(RecRequest(history=HISTORY, k=10)).item_ids
    assert got[:6] == top[4:] and len(got) == 10 and not set(top[:4]).intersection(got)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_added_items_are_answered_and_replaced_ones_rescored(tmp_path, encoding):
    model = _model(tmp_path, encoding)
    user = _user(model, HISTORY)
    strong = (user / np.abs(user).max() * 4)[None, :]  # aligned with the user: scores high
    base_top = model.recommend(RecRequest(history=HISTORY, k=5)).item_ids
    last = model.recommend(RecRequest(history=HISTORY, k=200)).item_ids[-1]
    stored = model.encode_vectors(["brand-new", last], np.vstack([strong, strong * 0.9]))
    live = model.with_catalog(CatalogLayer(revision=2, items={model.version: stored}))
    assert live.n_items == model.n_items + 1
    got = live.recommend(RecRequest(history=HISTORY, k=5))
    assert got.item_ids[:2] == ["brand-new", last]
    assert got.item_ids[2:] == base_top[:3]
    # a history naming the new item: not encoded (no input embedding), never answered
    seen = live.recommend(RecRequest(history=[*HISTORY, "brand-new"], k=5))
    assert seen.unknown_history == 1 and "brand-new" not in seen.item_ids
    assert seen.item_ids[:4] == got.item_ids[1:]  # the same user vector
    # other versions' vectors are not this one's
    other = model.with_catalog(CatalogLayer(revision=3, items={"other": stored}))
    assert other.recommend(RecRequest(history=HISTORY, k=5)).item_ids == base_top


def test_added_items_can_be_made_unavailable_too(tmp_path):
    model = _model(tmp_path, "int8")
    user = _user(model, HISTORY)
    stored = model.encode_vectors(["brand-new"], (user * 10)[None, :])
    items = {model.version: stored}
    shown = model.with_catalog(CatalogLayer(revision=1, items=items))
    hidden = model.with_catalog(CatalogLayer(2, frozenset({"brand-new"}), items))
    assert shown.recommend(RecRequest(history=HISTORY, k=1)).item_ids == ["brand-new"]
    assert "brand-new" not in hidden.recommend(RecRequest(history=HISTORY, k=10)).item_ids


def test_rows_that_do_not_fit_the_bundle_are_skipped(tmp_path):
    model = _model(tmp_path, "int8")
    good = model.encode_vectors(["ok"], _vectors(1, 8))
    layer = CatalogLayer(revision=1, items={model.version: {**good, "short": b"\x01\x02"}})
    live = model.with_catalog(layer)
    assert live.n_items == model.n_items + 1 and "short" not in live.vocab


def test_a_layer_without_vectors_shares_the_bundles_table(tmp_path):
    model = _model(tmp_path, "int8")
    live = model.with_catalog(CatalogLayer(revision=1, unavailable=frozenset({"i1"})))
    assert live.items is model.items and live.n_items == model.n_items
