"""The hostile corpus (`tests.factories.hostile_corpus`): every malicious or unacceptable
bundle is uploaded through the real admin API and must be refused with a 4xx naming the
reason, leaving the serving version and the installed versions exactly as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests import factories as f

BASE = f.BundleSpec(version="base", seed=3, ndcg=0.5)
MAX_LATENCY_MS = 30.0  # base answers in well under 1 ms; the slow encoder takes 90-200 ms
GZIP = {"Content-Type": "application/gzip"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, f.HostileCase]:
    cases = f.hostile_corpus(
        tmp_path_factory.mktemp("hostile"), serving_metric=("test_ndcg@10", BASE.ndcg)
    )
    return {c.name: c for c in cases}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return f.make_bundle_dir(tmp_path_factory.mktemp("base") / "base", BASE)


@pytest.fixture
def gated_client(client_for, make_settings, base_dir) -> TestClient:
    return client_for(
        make_settings(
            bootstrap_bundle=base_dir,
            gate_max_ndcg_drop=0.05,
            gate_max_latency_ms=MAX_LATENCY_MS,
        )
    )


def test_the_corpus_covers_every_gate(corpus):
    expected = {
        "path_traversal", "absolute_path", "symlink", "hardlink", "device_file",
        "too_many_files", "decompression_bomb", "sha256_mismatch", "onnx_wrong_input_name",
        "vocab_length_mismatch", "vocab_duplicate_ids", "vocab_empty_id", "nan_items",
        "inf_scales", "nan_golden", "golden_mismatch", "pickled_object_npy",
        "negative_popularity", "popularity_wrong_shape", "accuracy_gate", "latency_gate",
    }  # fmt: skip
    assert expected <= set(corpus)


CASES = [
    "path_traversal", "absolute_path", "symlink", "hardlink", "device_file", "subdirectory",
    "too_many_files", "decompression_bomb", "not_a_tarball", "sha256_mismatch",
    "size_mismatch", "unlisted_file", "onnx_not_a_model", "onnx_wrong_input_name",
    "onnx_wrong_input_dtype", "onnx_fixed_batch", "vocab_length_mismatch",
    "vocab_duplicate_ids", "vocab_empty_id", "vocab_not_strings", "nan_items", "inf_scales",
    "nan_golden", "golden_mismatch", "nan_encoder", "pickled_object_npy", "npy_shape_bomb",
    "vocab_deeply_nested", "too_many_golden_pairs",
    "negative_popularity", "popularity_wrong_shape", "bad_version_name", "accuracy_gate",
    "latency_gate",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_hostile_bundle_is_refused_and_changes_nothing(
    gated_client: TestClient, admin_headers, model_dir: Path, corpus, name: str
):
    case = corpus[name]
    before = f.tree(model_dir)
    r = gated_client.post("/admin/bundles", content=case.archive, headers={**admin_headers, **GZIP})
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    assert detail.startswith("bundle rejected: "), detail
    assert case.reason in detail, detail
    # The serving version is unchanged and still answers.
    assert gated_client.get("/admin/active", headers=admin_headers).json()["version"] == "base"
    rec = gated_client.post("/recommend", json={"history": ["i1", "i2"], "k": 3})
    assert rec.status_code == 200 and rec.json()["model_version"] == "base"
    # Nothing installed, nothing left behind on disk, nothing escaped the staging directory.
    listed = gated_client.get("/admin/bundles", headers=admin_headers).json()["versions"]
    assert [v["version"] for v in listed] == ["base"]
    # An upload unpacks into <model_dir>/.staging-*, so a "../x" member would land in
    # model_dir itself: its whole tree, files included, is as it was before the upload.
    assert f.tree(model_dir) == before


def test_the_accuracy_gate_names_both_numbers(gated_client: TestClient, admin_headers, corpus):
    r = gated_client.post(
        "/admin/bundles", content=corpus["accuracy_gate"].archive, headers={**admin_headers, **GZIP}
    )
    assert r.status_code == 422
    assert "test_ndcg@10 0.0500" in r.json()["detail"]
    assert "0.5000 of the serving version 'base'" in r.json()["detail"]
