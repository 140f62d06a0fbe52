"""`benchmarks.hostile.run_malicious_corpus` against a real service process started with
both optional gates, and `benchmarks.fuzz.run_fuzz` against one over HTTP."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fuzz import run_fuzz
from benchmarks.hostile import run_malicious_corpus
from tests.conftest import ADMIN_TOKEN, service_process
from tests.factories import BundleSpec, make_bundle_dir


def test_every_hostile_bundle_is_refused_by_a_running_service(tmp_path: Path):
    base = make_bundle_dir(tmp_path / "base", BundleSpec(version="base", ndcg=0.4))
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "BOOTSTRAP_BUNDLE": str(base),
        "MODEL_DIR": str(tmp_path / "models"),
        "GATE_MAX_NDCG_DROP": "0.05",
        "GATE_MAX_LATENCY_MS": "30",
    }
    with service_process(env) as url:
        report = run_malicious_corpus(url, ADMIN_TOKEN, gates=("accuracy", "latency"))
        fuzz = run_fuzz(url, 5, token=ADMIN_TOKEN)

    assert report["skipped"] == []
    assert report["tried"] >= 30
    assert report["rejected"] == report["tried"], [c for c in report["cases"] if c["status"] < 400]
    failed = [c for c in report["cases"] if not c["matched"]]
    assert report["reason_matched"] == report["tried"], failed
    assert not report["serving_version_changed"] and not report["installed_changed"]
    names = {c["name"] for c in report["cases"]}
    assert {"accuracy_gate", "latency_gate", "pickled_object_npy", "hardlink"} <= names

    assert fuzz["cases"] > 0 and fuzz["server_errors"] == 0, fuzz["failures"]


def test_optional_gate_cases_are_skipped_unless_the_service_has_them(tmp_path: Path):
    base = make_bundle_dir(tmp_path / "base", BundleSpec(version="base", ndcg=0.4))
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "BOOTSTRAP_BUNDLE": str(base),
        "MODEL_DIR": str(tmp_path / "models"),
    }
    with service_process(env) as url:
        report = run_malicious_corpus(url, ADMIN_TOKEN)
    assert sorted(report["skipped"]) == ["accuracy_gate", "latency_gate"]
    assert report["rejected"] == report["tried"]
    assert not report["installed_changed"]
