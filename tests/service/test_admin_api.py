from __future__ import annotations

import dataclasses
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import registry as registry_module
from service.main import create_app
from tests import factories as f
from tests.conftest import V2

GZIP = {"Content-Type": "application/gzip"}

ADMIN_CALLS = [
    ("get", "/admin/bundles"),
    ("post", "/admin/bundles"),
    ("post", "/admin/bundles/v1/activate"),
    ("post", "/admin/rollback"),
    ("get", "/admin/active"),
    ("post", "/admin/activate"),
    ("post", "/admin/canary/promote"),
    ("post", "/admin/canary/abort"),
    ("get", "/admin/status"),
]


def recommended_version(client: TestClient) -> str:
    r = client.post("/recommend", json={"history": ["i1", "i2"], "k": 5})
    assert r.status_code == 200, r.text
    version: str = r.json()["model_version"]
    return version


def upload(client: TestClient, archive: bytes, headers: dict[str, str]):
    return client.post("/admin/bundles", content=archive, headers={**headers, **GZIP})


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_is_404_when_no_token_is_configured(client_for, make_settings, v1_dir, method, path):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, admin_token=None))
    r = client.request(method, path, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 404


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_without_a_token_is_401(embedded_client: TestClient, method, path):
    r = embedded_client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_with_a_wrong_token_is_403(embedded_client: TestClient, method, path):
    r = embedded_client.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    assert r.json()["detail"] == "admin token is not valid"


def test_admin_with_a_non_bearer_scheme_is_401(embedded_client: TestClient):
    r = embedded_client.get("/admin/active", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401


def test_upload_activate_and_rollback_switch_the_answering_version(
    client: TestClient, admin_headers, v2_archive
):
    assert recommended_version(client) == "v1"
    r = upload(client, v2_archive, admin_headers)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == "v2"
    assert r.json()["manifest"]["n_items"] == V2.n_items
    assert recommended_version(client) == "v1"  # installed, not yet active

    r = client.post("/admin/bundles/v2/activate", headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["version"] == "v2"
    assert recommended_version(client) == "v2"
    assert client.get("/admin/active", headers=admin_headers).json()["version"] == "v2"

    r = client.post("/admin/rollback", headers=admin_headers)
    assert r.status_code == 200 and r.json()["version"] == "v1"
    assert recommended_version(client) == "v1"


def test_list_bundles_shows_versions_manifests_and_the_active_flag(
    embedded_client: TestClient, admin_headers, v2_archive
):
    upload(embedded_client, v2_archive, admin_headers)
    r = embedded_client.get("/admin/bundles", headers=admin_headers)
    assert r.status_code == 200
    body = r.json()
    assert body["active"] == "v1"
    by_version = {v["version"]: v for v in body["versions"]}
    assert set(by_version) == {"v1", "v2"}
    assert by_version["v1"]["active"] and not by_version["v2"]["active"]
    assert by_version["v2"]["manifest"]["model_version"] == "v2"
    assert by_version["v2"]["created_at"] is not None


def test_upload_as_multipart_form_is_accepted(
    embedded_client: TestClient, admin_headers, v2_archive
):
    r = embedded_client.post(
        "/admin/bundles",
        files={"file": ("v2.tar.gz", v2_archive, "application/gzip")},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == "v2"


def test_multipart_without_a_file_field_is_422(embedded_client: TestClient, admin_headers):
    r = embedded_client.post(
        "/admin/bundles", data={"note": "x"}, files={"other": ("a", b"b")}, headers=admin_headers
    )
    assert r.status_code == 422
    assert "file field named 'file'" in r.json()["detail"]


def test_upload_of_an_existing_version_is_409(
    embedded_client: TestClient, admin_headers, v1_archive
):
    r = upload(embedded_client, v1_archive, admin_headers)
    assert r.status_code == 409
    assert r.json()["detail"] == "model version 'v1' is already installed"


def test_empty_upload_is_422(embedded_client: TestClient, admin_headers):
    r = upload(embedded_client, b"", admin_headers)
    assert r.status_code == 422
    assert "upload is empty" in r.json()["detail"]


BAD = {
    "bad_checksum": (lambda d: f.corrupt_checksum(d), "sha256"),
    "wrong_vocab_size": (lambda d: f.corrupt_vocab_size(d), "vocab.json has"),
    "wrong_golden": (lambda d: f.corrupt_golden(d), "golden outputs"),
    "wrong_onnx_signature": (lambda d: f.corrupt_onnx_signature(d, V2), "inputs are"),
    "nan_encoder": (lambda d: f.corrupt_nan_encoder(d, V2), "NaN"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_bundle_is_refused_with_its_reason_and_v1_keeps_serving(
    client: TestClient, admin_headers, bad_bundle_dir, kind
):
    corrupt, reason = BAD[kind]
    d = bad_bundle_dir(V2)
    corrupt(d)
    r = upload(client, f.repack(d), admin_headers)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("bundle rejected: ")
    assert reason in r.json()["detail"]
    assert recommended_version(client) == "v1"
    versions = client.get("/admin/bundles", headers=admin_headers).json()["versions"]
    assert [v["version"] for v in versions] == ["v1"]
    assert client.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 404


@pytest.mark.parametrize(
    "archive",
    [f.traversal_archive(), f.symlink_archive(), b"not a tarball"],
    ids=["path_traversal", "symlink", "garbage"],
)
def test_unsafe_archive_is_refused_with_422(embedded_client: TestClient, admin_headers, archive):
    r = upload(embedded_client, archive, admin_headers)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("bundle rejected: ")
    assert recommended_version(embedded_client) == "v1"


def test_upload_over_the_size_limit_is_413(
    client_for, make_settings, v1_dir, admin_headers, v2_archive
):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, max_upload_bytes=2048))
    assert len(v2_archive) > 2048
    r = upload(client, v2_archive, admin_headers)
    assert r.status_code == 413
    assert "2048 bytes" in r.json()["detail"]

    def chunks():
        for start in range(0, len(v2_archive), 1000):
            yield v2_archive[start : start + 1000]

    r = client.post("/admin/bundles", content=chunks(), headers={**admin_headers, **GZIP})
    assert r.status_code == 413
    assert recommended_version(client) == "v1"


def test_upload_limit_is_separate_from_the_recommend_body_limit(
    embedded_client: TestClient, admin_headers, v2_archive
):
    assert len(v2_archive) < 512 * 1024 * 1024
    assert upload(embedded_client, v2_archive, admin_headers).status_code == 201


def test_activate_unknown_version_is_404(embedded_client: TestClient, admin_headers):
    r = embedded_client.post("/admin/bundles/v9/activate", headers=admin_headers)
    assert r.status_code == 404
    assert r.json()["detail"] == "model version 'v9' is not installed"


def test_rollback_without_a_previous_version_is_409(embedded_client: TestClient, admin_headers):
    r = embedded_client.post("/admin/rollback", headers=admin_headers)
    assert r.status_code == 409
    assert "no previously active version" in r.json()["detail"]


def test_active_reports_none_before_any_model_is_loaded(client_for, make_settings, admin_headers):
    client = client_for(make_settings())
    assert client.get("/admin/active", headers=admin_headers).json() == {
        "version": None,
        "manifest": None,
    }


# Bodies the traffic cycles through: histories of several lengths, an exclusion, and an
# empty history (answered from the version's popularity).
TRAFFIC = [
    {"history": ["i3", "i4"], "k": 5},
    {"history": ["i10", "i2", "i7", "i31"], "k": 8},
    {"history": ["i5"], "k": 6, "exclude": ["i6", "i9"]},
    {"history": [], "k": 4},
]
MIN_IN_SWAP_WINDOW = 20  # requests begun and answered while the activate call ran
WAIT_S = 30.0  # correctness waits only: generous for a busy 2-core machine


@dataclasses.dataclass(frozen=True)
class Answered:
    body: int  # index into TRAFFIC
    started: float  # time.monotonic()
    ended: float
    status: int
    answer: dict[str, Any]


def answers_of(client: TestClient) -> list[dict[str, Any]]:
    """What `client`'s serving version answers to each TRAFFIC body, one at a time."""
    out = []
    for body in TRAFFIC:
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def assert_answers_like(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got["model_version"] == expected["model_version"]
    assert got["strategy"] == expected["strategy"]
    assert [it["item_id"] for it in got["items"]] == [it["item_id"] for it in expected["items"]]
    scores = [it["score"] for it in got["items"]]
    assert np.allclose(scores, [it["score"] for it in expected["items"]], rtol=1e-5), got


def test_requests_during_a_swap_that_loads_from_disk_succeed_and_each_gets_its_versions_answer(
    client: TestClient,
    client_for,
    make_settings,
    admin_headers,
    v2_archive,
    v3_archive,
    model_dir,
    tmp_path,
    monkeypatch,
):
    """Traffic runs while v2 is uploaded, then activated from disk (v3, uploaded after it, is
    the model an upload leaves loaded), rolled back and activated again. Every request
    succeeds, and each answer is exactly what the version it names answers alone."""
    archive = tmp_path / "v2.tar.gz"
    archive.write_bytes(v2_archive)
    reference = client_for(make_settings(bootstrap_bundle=archive, model_dir=tmp_path / "ref"))
    expected = {"v1": answers_of(client), "v2": answers_of(reference)}
    assert {a["model_version"] for a in expected["v2"]} == {"v2"}
    assert expected["v1"] != expected["v2"]  # the check below tells the versions apart

    log: list[Answered] = []
    stop = threading.Event()

    def traffic(offset: int) -> None:
        n = offset
        while not stop.is_set():
            started = time.monotonic()
            r = client.post("/recommend", json=TRAFFIC[n % len(TRAFFIC)])
            log.append(
                Answered(n % len(TRAFFIC), started, time.monotonic(), r.status_code, r.json())
            )
            n += 1

    def answered_since(t: float) -> int:
        return sum(a.started >= t for a in list(log))

    loads: list[tuple[Path, float]] = []
    real = registry_module.load_model

    def slow_load(path: Path, options: Any = None) -> Any:
        """The activation's load from disk lasts until enough requests were answered
        meanwhile: the swap window then holds them however fast the load is."""
        entered = time.monotonic()
        loads.append((path, entered))
        if path == model_dir / "v2":
            assert f.poll_until(
                lambda: answered_since(entered) >= MIN_IN_SWAP_WINDOW, timeout_s=WAIT_S
            ), "requests stalled while a model loaded"
        return real(path, options)

    with ThreadPoolExecutor(max_workers=4) as pool:
        threads = [pool.submit(traffic, n) for n in range(4)]
        try:
            assert upload(client, v2_archive, admin_headers).status_code == 201
            assert upload(client, v3_archive, admin_headers).status_code == 201
            monkeypatch.setattr(registry_module, "load_model", slow_load)
            swap_start = time.monotonic()
            r = client.post("/admin/bundles/v2/activate", headers=admin_headers)
            swap_end = time.monotonic()
            assert r.status_code == 200, r.text
            assert client.post("/admin/rollback", headers=admin_headers).status_code == 200
            assert (
                client.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
            )
            last_swap = time.monotonic()
            assert f.poll_until(lambda: answered_since(last_swap) >= 20, timeout_s=WAIT_S)
        finally:
            stop.set()
            for t in threads:
                t.result()

    assert [path for path, t in loads if swap_start <= t <= swap_end] == [model_dir / "v2"]
    assert {a.status for a in log} == {200}, [a.answer for a in log if a.status != 200][:3]
    in_window = [a for a in log if swap_start <= a.started and a.ended <= swap_end]
    assert len(in_window) >= MIN_IN_SWAP_WINDOW, len(in_window)
    assert {a.answer["model_version"] for a in log} == {"v1", "v2"}
    for a in log:
        assert_answers_like(a.answer, expected[a.answer["model_version"]][a.body])
    assert {a.answer["model_version"] for a in log if a.ended < swap_start} <= {"v1"}
    assert {a.answer["model_version"] for a in log if a.started > last_swap} == {"v2"}


def test_a_restarted_app_comes_back_on_the_activated_version(
    client_for, make_settings, v1_dir, store_settings, admin_headers, v2_archive
):
    settings = make_settings(bootstrap_bundle=v1_dir, **store_settings)
    with TestClient(create_app(settings)) as first:
        assert upload(first, v2_archive, admin_headers).status_code == 201
        assert first.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    second = client_for(settings)
    assert recommended_version(second) == "v2"  # not the bootstrap bundle


V2_PQ = dataclasses.replace(V2, item_encoding="pq4")


def _pq_corruption(kind: str):
    """Rewrite a pq4 bundle's codebooks or codes, keeping its manifest self-consistent."""

    def corrupt(d):
        codebooks = np.load(d / "codebooks.npy")
        packed = np.load(d / "items.npy")
        if kind == "nan_codebook":
            codebooks[0, 2, 1] = np.nan
        else:  # 12 centroids per subspace, and a code of 15 pointing past them
            codebooks = codebooks[:, :12]
            packed[3, 0] = 0xF0 | (packed[3, 0] & 0x0F)
        for name, array in (("codebooks.npy", codebooks), ("items.npy", packed)):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
            f.replace_file(d, name, buf.getvalue())

    return corrupt


V2_INT4 = dataclasses.replace(V2, item_encoding="int4", shared_items=True)


def _int4_corruption(kind: str):
    """Rewrite an int4 bundle's packed rows or scales, keeping its manifest self-consistent."""

    def corrupt(d):
        name = "item_scales.npy" if kind.endswith("scale") else "items.npy"
        array = np.load(d / name)
        if kind == "signed_rows":
            array = array.view(np.int8)
        elif kind == "unpacked_rows":
            array = np.zeros((len(array), 2 * array.shape[1]), dtype=np.uint8)
        else:
            array[4] = np.nan if kind == "nan_scale" else -0.25
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        f.replace_file(d, name, buf.getvalue())

    return corrupt


@pytest.mark.parametrize("config", [V2_PQ, V2_INT4], ids=["pq4", "int4"])
def test_a_compact_bundle_uploads_activates_and_answers(
    client: TestClient, admin_headers, bad_bundle_dir, config
):
    d = bad_bundle_dir(config)
    r = upload(client, f.repack(d), admin_headers)
    assert r.status_code == 201, r.text
    assert client.post("/admin/bundles/v2/activate", headers=admin_headers).status_code == 200
    r = client.post("/recommend", json={"history": ["i1", "i2"], "k": 5})
    assert r.status_code == 200 and r.json()["model_version"] == "v2"
    assert len(r.json()["items"]) == 5


@pytest.mark.parametrize(
    ("config", "corrupt", "reason"),
    [
        (V2_PQ, _pq_corruption("nan_codebook"), "codebooks.npy contains NaN or Inf"),
        (
            V2_PQ,
            _pq_corruption("code_out_of_range"),
            "items.npy holds code 15, but codebooks.npy has only 12 centroids",
        ),
        (
            V2_INT4,
            _int4_corruption("signed_rows"),
            "items.npy is int8 (61, 4), manifest says int4 (61, 4)",
        ),
        (
            V2_INT4,
            _int4_corruption("unpacked_rows"),
            "items.npy is uint8 (61, 8), manifest says int4 (61, 4)",
        ),
        (V2_INT4, _int4_corruption("nan_scale"), "item_scales.npy contains NaN or Inf"),
        (
            V2_INT4,
            _int4_corruption("negative_scale"),
            "item_scales.npy has scales <= 0 at rows [4]",
        ),
    ],
    ids=[
        "nan_codebook",
        "code_out_of_range",
        "signed_rows",
        "unpacked_rows",
        "nan_scale",
        "negative_scale",
    ],
)
def test_a_compact_bundle_with_a_corrupt_table_is_refused_by_name(
    client: TestClient, admin_headers, bad_bundle_dir, config, corrupt, reason
):
    d = bad_bundle_dir(config)
    corrupt(d)
    r = upload(client, f.repack(d), admin_headers)
    assert r.status_code == 422
    assert reason in r.json()["detail"]
    assert recommended_version(client) == "v1"
