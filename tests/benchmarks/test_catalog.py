"""Growing a bundle's catalog (`benchmarks.catalog`): the grown bundle is valid, loads in the
service, keeps the source items as they were, and its encoder reads the grown table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.catalog import grow_bundle, main, recall_at_k, tie_recall
from bundle import decode_items, npy_data_offset, read_bundle
from service.loading import load_model
from service.model import RecRequest
from tests import factories as f

N_SRC, N_GROWN = 60, 500


@pytest.mark.parametrize(
    ("shared_items", "encoding"),
    [(True, "int8"), (True, "fp16"), (True, "fp32"), (False, "int8"), (False, "fp32")],
)
def test_grown_bundle_is_valid_loads_and_keeps_the_source_items(
    tmp_path: Path, shared_items: bool, encoding: str
) -> None:
    spec = f.BundleSpec(shared_items=shared_items, item_encoding=encoding, n_items=N_SRC)
    src = f.make_bundle_dir(tmp_path / "src", spec)
    out = grow_bundle(src, tmp_path / "grown", N_GROWN, noise=0.3, seed=1)

    before, after = read_bundle(src), read_bundle(out)
    m = after.manifest
    assert m.n_items == N_GROWN and m.model_version == f"v1-x{N_GROWN}"
    assert after.items.shape == (N_GROWN + 1, spec.dim)
    np.testing.assert_array_equal(after.items[: N_SRC + 1], before.items)  # bit for bit
    if before.item_scales is not None:
        assert after.item_scales is not None
        np.testing.assert_array_equal(after.item_scales[: N_SRC + 1], before.item_scales)
    assert after.vocab[: N_SRC + 1] == before.vocab
    assert after.vocab[N_SRC + 1 :] == [f"syn{r}" for r in range(N_SRC + 1, N_GROWN + 1)]
    np.testing.assert_array_equal(after.popularity[: N_SRC + 1], before.popularity)
    assert set(after.popularity[N_SRC + 1 :].tolist()) <= set(before.popularity[1:].tolist())
    growth = m.dataset["synthetic_growth"]
    assert growth["noise"] == 0.3 and growth["source_n_items"] == N_SRC
    assert "noise" in growth["notes"] and m.metrics == {}
    # Golden pairs: the source's, plus sequences of grown items (so the new rows are checked).
    assert len(m.golden) == len(before.manifest.golden) + 2
    assert max(max(g.input) for g in m.golden) == N_GROWN

    model = load_model(out)  # sha256, shapes, ONNX signature, golden outputs, warm-up
    history = ["syn450", "i3", f"syn{N_GROWN}"]
    rec = model.recommend(RecRequest(history=history, k=10))
    assert rec.strategy == "model" and len(rec.item_ids) == 10
    assert not set(history) & set(rec.item_ids)


def test_grown_encoder_reads_the_grown_table_from_the_item_files(tmp_path: Path) -> None:
    src = f.make_bundle_dir(tmp_path / "src", f.BundleSpec(shared_items=True, n_items=N_SRC))
    out = grow_bundle(src, tmp_path / "grown", N_GROWN, noise=0.3, seed=1)
    b = read_bundle(out)
    assert b.item_scales is not None
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    external = {
        t.name: (list(t.dims), {e.key: e.value for e in t.external_data})
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert external == {
        "items": (
            [N_GROWN + 1, 8],
            {"location": "items.npy", "offset": str(npy_data_offset(b.items)), "length": "4008"},
        ),
        "item_scales": (
            [N_GROWN + 1],
            {
                "location": "item_scales.npy",
                "offset": str(npy_data_offset(b.item_scales)),
                "length": str(4 * (N_GROWN + 1)),
            },
        ),
    }
    # The encoder is a masked mean over the table: a one-item history reads that item's row.
    served = load_model(out)
    seq = np.zeros((1, b.manifest.max_len), dtype=np.int64)
    seq[0, -1] = N_GROWN
    p = f.make_parameters(f.BundleSpec(n_items=N_SRC))
    row = decode_items(b.items, b.item_scales)[N_GROWN]
    np.testing.assert_allclose(
        served.encode(seq)[0], np.tanh(row @ p["W"] + p["b"]), rtol=1e-5, atol=1e-5
    )


def test_without_noise_every_new_item_copies_a_source_item(tmp_path: Path) -> None:
    src = f.make_bundle_dir(tmp_path / "src", f.BundleSpec(shared_items=True, n_items=N_SRC))
    b = read_bundle(grow_bundle(src, tmp_path / "grown", 200, noise=0.0, seed=2))
    vectors = decode_items(b.items, b.item_scales)
    source = vectors[1 : N_SRC + 1]
    for r in range(N_SRC + 1, 201):
        parent = np.flatnonzero((source == vectors[r]).all(axis=1))
        assert len(parent) >= 1
        assert b.popularity[r] == b.popularity[parent[0] + 1]


def test_grown_items_are_their_source_plus_noise_of_the_stated_size(tmp_path: Path) -> None:
    src = f.make_bundle_dir(
        tmp_path / "src", f.BundleSpec(n_items=N_SRC, dim=32, item_encoding="fp32")
    )
    b = read_bundle(grow_bundle(src, tmp_path / "grown", 3000, noise=0.2, seed=3))
    vectors = b.items.astype(np.float64)
    source, new = vectors[1 : N_SRC + 1], vectors[N_SRC + 1 :]
    distances = np.linalg.norm(new[:, None, :] - source[None, :, :], axis=2)
    parent = distances.argmin(axis=1)
    relative = distances.min(axis=1) / np.linalg.norm(source[parent], axis=1)
    assert abs(np.median(relative) - 0.2) < 0.02


def test_grow_refuses_to_shrink_and_seeds_reproduce(tmp_path: Path) -> None:
    src = f.make_bundle_dir(tmp_path / "src", f.BundleSpec(n_items=N_SRC))
    with pytest.raises(ValueError, match="fewer"):
        grow_bundle(src, tmp_path / "small", N_SRC - 1, noise=0.3, seed=0)
    a = read_bundle(grow_bundle(src, tmp_path / "a", 100, noise=0.3, seed=5, version="a"))
    b = read_bundle(grow_bundle(src, tmp_path / "b", 100, noise=0.3, seed=5, version="b"))
    np.testing.assert_array_equal(a.items, b.items)


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(exact[:, ::-1], exact) == 1.0  # order does not matter
    assert recall_at_k(np.array([[1, 2, 9, -1], [8, 7, 6, 5]]), exact) == 0.75
    assert recall_at_k(np.full((2, 4), -1), exact) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        recall_at_k(exact[:1], exact)


def test_tie_recall_counts_an_item_tied_with_the_kth_as_a_hit() -> None:
    exact = np.array([[9.0, 8.0, 7.0], [3.0, 2.0, 2.0]], dtype=np.float32)
    assert tie_recall(exact, exact) == 1.0
    # row 0 found one item below the 3rd; row 1 another row tied with its 3rd
    found = np.array([[9.0, 8.0, 6.5], [3.0, 2.0, 2.0]], dtype=np.float32)
    assert tie_recall(found, exact) == pytest.approx(5 / 6)
    assert tie_recall(np.full((2, 3), -np.inf), exact) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        tie_recall(exact[:, :2], exact)


def test_pq_ann_reports_the_full_scan_the_ivf_over_the_codes_and_int8_ann(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f.BundleSpec(item_encoding="pq4", n_items=N_SRC, dim=16)
    src = f.make_bundle_dir(tmp_path / "src", spec)
    argv = ["pq-ann", "--bundle", str(src), "--items", "3000", "--m", "8", "4", "--nprobe", "55"]
    assert main([*argv, "--refine", "3000", "--users", "16", "--history", "3"]) == 0
    out = capsys.readouterr().out
    assert "grown to 3,000 items" in out and "int8 rows" in out
    assert "pq4 M = 8, " in out and "the bundle's codebooks" in out  # the bundle's M: 16 / 2
    assert "pq4 M = 4, " in out and "trained codebooks" in out
    # the full scan is exact, and so is the IVF index scanning every list and candidate
    scans = [line for line in out.splitlines() if "CodeScorer" in line or "nprobe   55" in line]
    assert len(scans) == 4
    assert all(line.count("recall@10 1.0000, ties 1.0000") == 2 for line in scans)
