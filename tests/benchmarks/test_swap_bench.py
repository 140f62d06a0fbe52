"""The swap benchmark harness: end to end on a tiny bundle, and its pure parts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.fleet import retag
from benchmarks.harness.trace import Answer, percentile, read_trace, summarize
from benchmarks.swap import main
from benchmarks.swap_phases import VERSIONS
from benchmarks.swap_report import evaluate_targets, memory_summary, swap_summary
from bundle import read_bundle
from models.synthetic import SyntheticConfig, write_synthetic
from tests.factories import BundleSpec, make_bundle_dir

HAVE_LOCUST = importlib.util.find_spec("locust") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
SPEC = BundleSpec(version="tiny", n_items=60, dim=8, max_len=12, ndcg=0.3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not HAVE_LOCUST:
        pytest.skip("locust not installed (pip install -e '.[bench]')")
    root = tmp_path_factory.mktemp("swap")
    data = root / "tiny-shop.txt"
    write_synthetic(data, SyntheticConfig(n_users=200, n_items=60, n_topics=4, min_len=5,
                                          max_len=15, seed=3))  # fmt: skip
    bundle_dir = make_bundle_dir(root / "bundle", SPEC)
    argv = [
        "--data", str(data), "--bundle", str(bundle_dir), "--work", str(root / "work"),
        "--out", str(root / "results"), "--probe-rps", "150", "--probe", "2", "--steady", "3",
        "--duration", "13", "--swaps", "3", "--cycles", "6", "--outage-run", "7",
        "--outage", "2", "--fuzz-examples", "2",
    ]  # fmt: skip
    if not HAVE_MPL:
        argv.append("--no-plot")
    assert main(argv) == 0
    out = root / "results"
    return {"out": out, "json": json.loads((out / "swap.json").read_text()),
            "md": (out / "swap.md").read_text()}  # fmt: skip


@pytest.mark.timeout(240)
def test_the_run_writes_the_issue_schema(bench: dict[str, Any]) -> None:
    r = bench["json"]
    assert {"requests", "failed", "swaps", "p99_steady_ms", "p99_during_swaps_ms",
            "versions_seen"} <= set(r["swap_under_load"])  # fmt: skip
    assert {"rss_mb_after_5", "rss_mb_after_100"} <= set(r["memory"])
    assert {"requests", "failed"} <= set(r["redis_outage"])
    assert {"cases", "server_errors"} <= set(r["fuzz"])
    assert {"tried", "rejected", "serving_version_changed"} <= set(r["malicious_bundles"])
    assert r["command"].endswith("--no-plot") or (bench["out"] / "swap.png").stat().st_size > 0
    assert "## Targets" in bench["md"]


@pytest.mark.timeout(240)
def test_the_fleet_swapped_under_load_without_failures(bench: dict[str, Any]) -> None:
    s = bench["json"]["swap_under_load"]
    assert s["requests"] > 0 and s["failed"] == 0, s["statuses"]
    assert s["swaps"] == s["swaps_ok"] == 3, s["swap_log"]
    assert set(s["versions_seen"]) == set(VERSIONS)  # both versions answered during the run
    assert s["fleet_propagation_max_s"] is not None and s["fleet_propagation_max_s"] < 2.0
    # swap-b was uploaded last, so every replica loaded it ahead (`prepared`); afterwards each
    # replica holds the other version as its standby: no swap under load loads from disk.
    assert [w["warm"] for w in s["swap_log"]] == [True, True, True], s["swap_log"]


@pytest.mark.timeout(240)
def test_redis_outage_is_seen_as_degraded_and_recovers(bench: dict[str, Any]) -> None:
    o = bench["json"]["redis_outage"]
    assert o["requests"] > 0 and o["failed"] == 0, o["statuses"]
    assert all("degraded" in seen for seen in o["readyz_during_outage"])
    assert o["recovered_s"] is not None


@pytest.mark.timeout(240)
def test_memory_curve_and_hostile_input_are_reported(bench: dict[str, Any]) -> None:
    r = bench["json"]
    assert len(r["memory"]["curve"]) == 7 and r["memory"]["cycles"] == 6
    # those activations load from disk (cold) and are timed fleet-wide
    assert 0 < r["memory"]["fleet_propagation_cold_max_s"] < 30
    assert r["fuzz"]["cases"] > 0 and r["fuzz"]["server_errors"] == 0
    b = r["malicious_bundles"]
    assert b["tried"] >= 30 and b["rejected"] == b["tried"]
    assert not b["serving_version_changed"]


# --- pure parts ------------------------------------------------------------------------------
def test_retag_changes_only_the_version_and_the_copy_still_verifies(tmp_path: Path) -> None:
    src = make_bundle_dir(tmp_path / "src", BundleSpec(version="orig"))
    copy = retag(src, tmp_path / "copy", "swap-b")
    assert read_bundle(copy).version == "swap-b"  # read_bundle checks every file's sha256
    assert read_bundle(src).version == "orig"


def test_trace_lines_are_read_back(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("100.5,3.250,200,swap-a,0\n100.6,12.000,503,,1\n")
    assert read_trace(path) == [
        Answer(100.5, 3.25, 200, "swap-a", 0),
        Answer(100.6, 12.0, 503, "", 1),
    ]


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def _answers(spec: list[tuple[float, float, int, str]]) -> list[Answer]:
    return [Answer(t, ms, st, v, 0) for t, ms, st, v in spec]


def test_p99_during_swaps_counts_only_requests_inside_the_windows() -> None:
    answers = _answers(
        [(0.0, 1.0, 200, "swap-a"), (1.0, 50.0, 200, "swap-b"), (5.0, 2.0, 503, ""),
         (9.0, 3.0, 200, "swap-b")]
    )  # fmt: skip
    swaps = [{"start": 0.9, "fleet_s": 0.2, "status": 200, "activate_s": 0.1, "warm": False}]
    s = swap_summary(answers, swaps, {"p99_ms": 4.0})
    assert s["p99_during_swaps_ms"] == 50.0 and s["requests_during_swaps"] == 1
    assert s["failed"] == 1 and s["versions_seen"] == ["swap-a", "swap-b"]
    assert s["fleet_propagation_max_s"] == 0.2 and s["swaps_ok"] == 1


def test_cold_and_warm_swaps_are_reported_apart() -> None:
    swaps = [
        {"start": 1.0, "fleet_s": 1.5, "status": 200, "activate_s": 0.9, "warm": False},
        {"start": 4.0, "fleet_s": 0.1, "status": 200, "activate_s": 0.05, "warm": True},
        {"start": 7.0, "fleet_s": 0.2, "status": 200, "activate_s": 0.05, "warm": True},
    ]
    s = swap_summary(_answers([(2.0, 3.0, 200, "swap-a")]), swaps, {"p99_ms": 4.0})
    assert s["cold_swaps"] == 1 and s["fleet_propagation_cold_max_s"] == 1.5
    assert s["fleet_propagation_warm_max_s"] == 0.2 and s["fleet_propagation_max_s"] == 1.5


def test_summary_skips_warm_up_in_percentiles_but_counts_everything() -> None:
    answers = _answers([(0.0, 900.0, 200, "a"), (3.0, 2.0, 200, "a"), (4.0, 4.0, 200, "a")])
    s = summarize(answers, skip_s=2.0)
    assert s["requests"] == 3 and s["max_ms"] == 4.0 and s["p99_ms"] == 4.0


def test_memory_summary_reports_the_replica_that_grew_more() -> None:
    curve = [{"cycle": c, "rss_mb": [100.0 + c, 100.0 + 2 * c]} for c in range(11)]
    m = memory_summary(curve)
    assert m["cycles"] == 10 and m["replica"].startswith("r2")
    assert (m["rss_mb_after_5"], m["rss_mb_after_100"]) == (110.0, 120.0)


def _results(**changes: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "swap_under_load": {
            "failed": 0,
            "p99_steady_ms": 10.0,
            "p99_during_swaps_ms": 14.0,
            "versions_seen": list(VERSIONS),
            "swaps": 20,
            "swaps_ok": 20,
            "fleet_propagation_max_s": 0.4,
        },
        "memory": {"rss_mb_after_5": 200.0, "rss_mb_after_100": 210.0, "cycles": 100},
        "redis_outage": {"failed": 0},
        "fuzz": {"server_errors": 0, "schema_violations": 0},
        "malicious_bundles": {
            "tried": 34,
            "rejected": 34,
            "reason_matched": 34,
            "serving_version_changed": False,
        },
    }
    for path, value in changes.items():
        section, key = path.split("__")
        r[section][key] = value
    return r


def test_targets_pass_and_fail_at_their_thresholds() -> None:
    assert evaluate_targets(_results())["all_passed"]
    t = evaluate_targets(_results(swap_under_load__p99_during_swaps_ms=15.1))
    assert not t["all_passed"] and not t["swap_p99_ratio"]["passed"]
    assert not evaluate_targets(_results(memory__rss_mb_after_100=221.0))["rss_growth"]["passed"]
    assert not evaluate_targets(_results(redis_outage__failed=1))["outage_failed"]["passed"]
    bad_version = _results(swap_under_load__versions_seen=["swap-a", "other"])
    assert not evaluate_targets(bad_version)["versions"]["passed"]
    changed = _results(malicious_bundles__serving_version_changed=True)
    assert not evaluate_targets(changed)["serving_unchanged"]["passed"]
