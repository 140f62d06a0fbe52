"""The optional promotion gates (`service.gates`): accuracy against the serving version,
batch-1 latency; on install, activation and a canary's start, not on rollback nor on a
replica following the fleet's choice, off by default."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bundle import Manifest
from service.errors import GateFailed
from service.gates import GateConfig, check_accuracy, measure_latency_ms
from service.loading import load_model
from service.registry import Registry
from service.settings import Settings
from service.store import EmbeddedStore
from tests import factories as f

GZIP = {"Content-Type": "application/gzip"}


def _manifest(version: str, metrics: dict[str, float]) -> Manifest:
    return Manifest(
        model_version=version,
        created_at=datetime.now(UTC),
        dim=8,
        max_len=12,
        n_items=60,
        item_encoding="int8",
        metrics=metrics,
    )


SERVING = _manifest("old", {"test_ndcg@10": 0.40})


@pytest.mark.parametrize(
    ("candidate", "serving"),
    [
        ({"test_ndcg@10": 0.40}, SERVING),  # equal
        ({"test_ndcg@10": 0.381}, SERVING),  # 4.75% below, within 5%
        ({"test_ndcg@10": 0.90}, SERVING),  # better
        ({}, None),  # nothing serving: nothing to compare
        ({}, _manifest("old", {})),  # the serving manifest has no such metric
    ],
)
def test_accuracy_gate_passes(candidate, serving):
    check_accuracy(_manifest("new", candidate), serving, metric="test_ndcg@10", max_drop=0.05)


def test_accuracy_gate_refuses_a_drop_beyond_the_margin_naming_both_numbers():
    with pytest.raises(GateFailed) as e:
        check_accuracy(
            _manifest("new", {"test_ndcg@10": 0.30}), SERVING, metric="test_ndcg@10", max_drop=0.05
        )
    assert str(e.value) == (
        "bundle rejected: accuracy gate: test_ndcg@10 0.3000 of 'new' is 25.0% below 0.4000 "
        "of the serving version 'old'; at most 5.0% is allowed (GATE_MAX_NDCG_DROP)"
    )


def test_accuracy_gate_refuses_a_candidate_without_the_metric():
    with pytest.raises(GateFailed, match="has no metric 'test_ndcg@10'"):
        check_accuracy(_manifest("new", {}), SERVING, metric="test_ndcg@10", max_drop=0.05)


def test_latency_is_measured_on_the_whole_request_path(v1_dir: Path):
    ms = measure_latency_ms(load_model(v1_dir))
    assert 0 < ms < 1000


def _upload(client: TestClient, archive: bytes, headers: dict[str, str]) -> int:
    return client.post("/admin/bundles", content=archive, headers={**headers, **GZIP}).status_code


@pytest.fixture
def bundles(tmp_path: Path) -> dict[str, bytes | Path]:
    out: dict[str, bytes | Path] = {
        "base": f.make_bundle_dir(tmp_path / "base", f.BundleSpec(version="base", ndcg=0.5))
    }
    for version, ndcg in [("mid", 0.49), ("high", 0.6), ("low", 0.1)]:
        out[version] = f.make_bundle_archive(tmp_path, f.BundleSpec(version=version, ndcg=ndcg))
    return out


def test_gates_are_off_by_default(client_for, make_settings, admin_headers, bundles, tmp_path):
    client = client_for(make_settings(bootstrap_bundle=bundles["base"]))
    assert _upload(client, bundles["low"], admin_headers) == 201
    slow = f.make_bundle_archive(tmp_path, f.BundleSpec(version="slow", slow_layers=4))
    assert _upload(client, slow, admin_headers) == 201
    assert client.post("/admin/bundles/low/activate", headers=admin_headers).status_code == 200


def test_activation_checks_accuracy_against_the_model_serving_then_but_rollback_does_not(
    client_for, make_settings, admin_headers, bundles
):
    client = client_for(make_settings(bootstrap_bundle=bundles["base"], gate_max_ndcg_drop=0.05))
    assert _upload(client, bundles["mid"], admin_headers) == 201  # 0.49 >= 0.5 * 0.95
    assert _upload(client, bundles["high"], admin_headers) == 201
    assert client.post("/admin/bundles/high/activate", headers=admin_headers).status_code == 200

    r = client.post("/admin/bundles/mid/activate", headers=admin_headers)  # 0.49 < 0.6 * 0.95
    assert r.status_code == 422
    assert "0.4900 of 'mid'" in r.json()["detail"] and "0.6000" in r.json()["detail"]
    assert client.get("/admin/active", headers=admin_headers).json()["version"] == "high"

    r = client.post("/admin/rollback", headers=admin_headers)  # base, 0.5: the way back stays open
    assert r.status_code == 200 and r.json()["version"] == "base"


def test_a_canary_is_gated_against_the_active_version_like_an_activation(
    client_for, make_settings, admin_headers, bundles
):
    client = client_for(make_settings(bootstrap_bundle=bundles["base"], gate_max_ndcg_drop=0.05))
    assert _upload(client, bundles["mid"], admin_headers) == 201
    assert _upload(client, bundles["high"], admin_headers) == 201
    assert client.post("/admin/bundles/high/activate", headers=admin_headers).status_code == 200

    r = client.post(
        "/admin/activate", json={"version": "mid", "canary_percent": 10}, headers=admin_headers
    )
    assert r.status_code == 422
    assert "0.4900 of 'mid'" in r.json()["detail"] and "0.6000" in r.json()["detail"]
    status = client.get("/admin/status", headers=admin_headers).json()
    assert (status["serving"], status["canary"], status["fleet_canary"]) == ("high", None, None)


def test_a_replica_follows_the_fleets_choice_without_running_its_own_gates(model_dir, bundles):
    """The replica that took the admin call ran the gates; the others follow the stored
    state whatever their own gate settings say, so the fleet never splits over them."""
    store = EmbeddedStore(model_dir)
    strict = Registry(model_dir=model_dir, store=store, gates=GateConfig(max_metric_drop=0.05))
    strict.start(bootstrap=bundles["base"])
    lax = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))  # another replica
    lax.start()
    for version in ("high", "low"):
        lax.install_archive(io.BytesIO(bundles[version]))  # type: ignore[arg-type]
    lax.activate("high")
    strict.sync()
    assert strict.current is not None and strict.current.version == "high"
    with pytest.raises(GateFailed):  # its own admin calls are gated: 0.1 < 0.6 * 0.95
        strict.activate("low")
    lax.activate("low")
    strict.sync()
    assert strict.current is not None and strict.current.version == "low"
    assert strict.fleet_error is None


def test_a_fast_enough_bundle_passes_the_latency_gate(
    client_for, make_settings, admin_headers, bundles
):
    client = client_for(make_settings(bootstrap_bundle=bundles["base"], gate_max_latency_ms=500))
    assert _upload(client, bundles["high"], admin_headers) == 201
    assert client.post("/admin/bundles/high/activate", headers=admin_headers).status_code == 200


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"GATE_MAX_NDCG_DROP": "0.02"}, "gate_max_ndcg_drop", 0.02),
        ({"GATE_MAX_NDCG_DROP": ""}, "gate_max_ndcg_drop", None),
        ({"GATE_MAX_LATENCY_MS": "25"}, "gate_max_latency_ms", 25.0),
        ({"GATE_MAX_LATENCY_MS": ""}, "gate_max_latency_ms", None),
        ({"GATE_METRIC": "test_hr@10"}, "gate_metric", "test_hr@10"),
        ({}, "gate_metric", "test_ndcg@10"),
    ],
)
def test_gate_settings_are_read_from_the_environment(monkeypatch, env, field, value):
    for name, v in env.items():
        monkeypatch.setenv(name, v)
    assert getattr(Settings(_env_file=None), field) == value  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value"),
    [("GATE_MAX_NDCG_DROP", "-0.1"), ("GATE_MAX_NDCG_DROP", "1.5"), ("GATE_MAX_LATENCY_MS", "0")],
)
def test_invalid_gate_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings(_env_file=None)  # type: ignore[call-arg]
