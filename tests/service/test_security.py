"""Security properties of the service: the admin guard, request and upload limits, and that
nothing a bundle carries is ever executed (no pickle anywhere on the serving side)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import deps
from tests import factories as f

ROOT = Path(__file__).resolve().parents[2]
SERVING_PACKAGES = ("service", "bundle")
GZIP = {"Content-Type": "application/gzip"}


# --- admin guard ------------------------------------------------------------------------


def test_admin_token_is_compared_in_constant_time():
    source = inspect.getsource(deps.require_admin)
    assert "secrets.compare_digest(" in source
    assert "==" not in source.replace("is None", "")  # no early-exit string comparison


@pytest.mark.parametrize(
    "token",
    ["test-admin-token-0123456789abcde", "test-admin-token-0123456789abcdef0", "tëst", ""],
    ids=["prefix", "longer", "non_ascii", "empty"],
)
def test_near_miss_tokens_are_403_or_401_never_500(embedded_client: TestClient, token: str):
    header = b"Bearer " + token.encode()  # raw UTF-8 bytes on the wire
    r = embedded_client.get("/admin/active", headers={"Authorization": header})
    assert r.status_code in (401, 403), r.text


def test_disabled_admin_api_is_absent_from_the_openapi_schema(client_for, make_settings, v1_dir):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, admin_token=None))
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/admin")]
    assert client.post("/admin/bundles", content=b"x").status_code == 404


# --- limits -----------------------------------------------------------------------------


def test_multipart_upload_over_the_size_limit_is_413(
    client_for, make_settings, v1_dir, admin_headers, v2_archive
):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, max_upload_bytes=2048))
    r = client.post(
        "/admin/bundles",
        files={"file": ("v2.tar.gz", v2_archive, "application/gzip")},
        headers=admin_headers,
    )
    assert r.status_code == 413
    assert "2048 bytes" in r.json()["detail"]


def test_upload_that_unpacks_past_the_limit_is_refused(
    client_for, make_settings, v1_dir, admin_headers
):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, max_unpacked_bytes=1 << 20))
    r = client.post(
        "/admin/bundles", content=f.bomb_archive(2 << 20), headers={**admin_headers, **GZIP}
    )
    assert r.status_code == 422
    assert "more than 1048576 bytes" in r.json()["detail"]


@pytest.mark.parametrize(
    ("settings", "body", "loc", "msg"),
    [
        ({"max_k": 5}, {"history": ["i1"], "k": 6}, ["body", "k"], "k is 6; at most 5"),
        (
            {"max_exclude": 2},
            {"history": ["i1"], "exclude": ["a", "b", "c"]},
            ["body", "exclude"],
            "exclude has 3 items; at most 2",
        ),
        (
            {"max_history": 3},
            {"history": ["i1"] * 4},
            ["body", "history"],
            "history has 4 items; at most 3",
        ),
        (
            {"max_candidates": 1},
            {"history": [], "candidates": ["i1", "i2"]},
            ["body", "candidates"],
            "candidates has 2 items; at most 1",
        ),
        (
            {"max_item_id_length": 4},
            {"history": ["i1", "i12345"]},
            ["body", "history", 1],
            "at most 4 characters",
        ),
        (
            {},
            {"history": ["x" * 257]},
            ["body", "history", 0],
            "at most 256 characters",
        ),
    ],
    ids=["k", "exclude", "history", "candidates", "id_length_setting", "id_length_schema"],
)
def test_request_limits_are_422_naming_the_field(
    client_for, make_settings, v1_dir, settings, body, loc, msg
):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, **settings))
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc
    assert msg in error["msg"]


def test_recommend_body_over_the_limit_is_413(client_for, make_settings, v1_dir):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, max_body_bytes=1024))
    r = client.post("/recommend", json={"history": ["i1"] * 400})
    assert r.status_code == 413
    assert "1024 bytes" in r.json()["detail"]


# --- nothing in a bundle is executed ----------------------------------------------------

# Modules that deserialize code or arbitrary objects; none belongs on the serving side.
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "joblib",
    "marshal",
    "shelve",
    "cloudpickle",
}
UNSAFE_CALLS = {"eval", "exec", "load", "loads"}  # load(s) only when from an unsafe module


def _serving_sources() -> list[Path]:
    files = [p for pkg in SERVING_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 10
    return files


@pytest.mark.parametrize("path", _serving_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_serving_code_never_unpickles_or_evaluates(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES
        ):
            problems.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if isinstance(func, ast.Name) and name in ("eval", "exec"):
                problems.append(f"{name}() at line {node.lineno}")
            # np.load / numpy.load can unpickle; the bundle reader uses read_array instead.
            if (
                isinstance(func, ast.Attribute)
                and name == "load"
                and isinstance(func.value, ast.Name)
                and func.value.id in ("np", "numpy")
            ):
                problems.append(f"np.load at line {node.lineno}")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    problems.append(f"allow_pickle not False at line {node.lineno}")
    assert not problems, f"{path.relative_to(ROOT)}: {problems}"


def test_an_object_npy_is_refused_without_running_its_payload(
    embedded_client: TestClient, admin_headers, tmp_path: Path
):
    marker = tmp_path / "pwned"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    d = f.make_bundle_dir(tmp_path / "evil", f.BundleSpec(version="evil"))
    f.replace_file(d, "popularity.npy", f._npy(f.np.array([Payload()] * 61, dtype=object)))
    r = embedded_client.post(
        "/admin/bundles", content=f.repack(d), headers={**admin_headers, **GZIP}
    )
    assert r.status_code == 422
    assert "popularity.npy holds Python objects" in r.json()["detail"]
    assert not marker.exists()


@pytest.mark.parametrize("version", ["..", "%2e%2e", "..%2Fv1", ".staging-x", "v1%00", "a" * 65])
def test_activating_a_path_like_version_is_404(embedded_client: TestClient, admin_headers, version):
    r = embedded_client.post(f"/admin/bundles/{version}/activate", headers=admin_headers)
    # The client resolves a literal "..": /admin/bundles/../activate is POST /admin/activate
    # (activate or canary, version in the body), which refuses the missing body.
    assert r.status_code == (422 if version == ".." else 404)
    assert embedded_client.get("/admin/active", headers=admin_headers).json()["version"] == "v1"
