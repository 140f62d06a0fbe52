"""The serving benchmark harness: end to end on a tiny bundle, and its pure parts."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.apps import constant_answer
from benchmarks.loadgen import parse_locust_stats, parse_wrk, users_for, wrk_script
from benchmarks.serve import (
    TARGET_P99_AT_70PCT_MS,
    VARIANTS,
    climb,
    default_scale_entries,
    evaluate_targets,
    main,
    max_rps,
    parse_scale,
)
from benchmarks.workload import Workload, WorkloadConfig, build_workload, histories_from_data
from models.synthetic import SyntheticConfig, write_synthetic
from tests.factories import BundleSpec, item_ids, make_bundle_dir

HAVE_LOCUST = importlib.util.find_spec("locust") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
SPEC = BundleSpec(version="tiny", n_items=60, dim=8, max_len=12)
LEVEL_KEYS = {"offered_rps", "rps", "p50_ms", "p99_ms", "failures"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    data = root / "tiny-shop.txt"
    # models.synthetic names items i1..iN, as the factory bundle's vocabulary does.
    write_synthetic(data, SyntheticConfig(n_users=200, n_items=60, n_topics=4, min_len=5,
                                          max_len=15, seed=3))  # fmt: skip
    return {"root": root, "data": data, "bundle": make_bundle_dir(root / "bundle", SPEC)}


@pytest.fixture(scope="module")
def bench(tiny: dict[str, Path]) -> dict[str, Any]:
    if not HAVE_LOCUST:
        pytest.skip("locust not installed (pip install -e '.[bench]')")
    root = tiny["root"]
    argv = [
        "--data", str(tiny["data"]), "--bundle", str(tiny["bundle"]),
        "--work", str(root / "work"), "--out", str(root / "results"),
        "--levels", "40", "--duration", "2", "--refine", "0", "--min-rps", "40",
        "--warmup", "10", "--wrk-duration", "1", "--wrk-connections", "8",
        "--scale", f"tiny={tiny['bundle']}:0.9", "--scale-rps", "20",
    ]  # fmt: skip
    if not HAVE_MPL:
        argv.append("--no-plot")
    assert main(argv) == 0
    out = root / "results"
    return {
        "root": root,
        "out": out,
        "json": json.loads((out / "serve.json").read_text()),
        "md": (out / "serve.md").read_text(),
    }


@pytest.mark.timeout(120)
def test_json_has_the_schema(bench: dict[str, Any]) -> None:
    r = bench["json"]
    assert set(r) >= {"cpu", "command", "git_commit", "variants", "scale", "targets"}
    assert r["cpu"] and "benchmarks.serve" in r["command"] and "--levels 40" in r["command"]
    # The host, probed on the server core before and after the variants ran.
    assert r["host"]["python_probe_ms"]["start"] > 0 and r["host"]["python_probe_ms"]["end"] > 0
    assert r["git_commit"] is None or len(r["git_commit"]) == 40
    assert [v["name"] for v in r["variants"]] == list(VARIANTS)
    for v in r["variants"]:
        assert v["levels"], v["name"]
        for level in v["levels"]:
            assert set(level) >= LEVEL_KEYS, v["name"]
            assert level["offered_rps"] == 40 and level["requests"] > 0
            assert 0.0 <= level["failures"] <= 1.0
        best = v["max_rps_at_p99_50ms"]
        assert best is None or best > 0
        assert v["rss_mb"] > 0
    by = {v["name"]: v for v in r["variants"]}
    assert by["ceiling"]["path"] == "/bench/constant" and by["shipped"]["path"] == "/recommend"
    assert by["shipped"]["env"] == {"BATCH_MAX_SIZE": "32"}
    assert by["student_fp32"]["env"] == {"BATCH_MAX_SIZE": "1"}
    # No checkpoints: the baselines are random-init, and say so.
    assert by["naive"]["weights"] == "random-init (speed only)"
    assert by["student_fp32"]["weights"] == "random-init (speed only)"
    assert by["student_fp32"]["item_encoding"] == "fp32"
    if by["shipped"]["max_rps_at_p99_50ms"] is not None:
        at70 = by["shipped"]["p99_at_70pct"]
        assert at70["offered_rps"] == pytest.approx(
            0.7 * by["shipped"]["max_rps_at_p99_50ms"], abs=0.1
        )
    # The ceiling always gets a wrk figure (or says why not).
    assert r["ceiling_wrk"] is not None
    assert "rps" in r["ceiling_wrk"] or "error" in r["ceiling_wrk"]


def test_workload_and_bundles_are_what_the_report_says(bench: dict[str, Any]) -> None:
    r = bench["json"]
    assert r["load"]["workload"]["histories"] == "real"
    assert r["bundle"]["n_items"] == 60 and r["inputs"]["bundle_source"] == "--bundle"
    fp32 = bench["root"] / "work" / "serve" / "student-fp32-bundle" / "manifest.json"
    assert json.loads(fp32.read_text())["item_encoding"] == "fp32"
    (scale,) = r["scale"]
    assert scale["label"] == "tiny" and scale["items"] == 60 and scale["recall@10"] == 0.9
    assert scale["offered_rps"] == 20 and scale["rss_mb"] > 0
    assert set(scale) >= {"items", "offered_rps", "p50_ms", "p99_ms", "recall@10", "rss_mb"}


def test_targets_follow_from_the_variants(bench: dict[str, Any]) -> None:
    r = bench["json"]
    assert r["targets"] == evaluate_targets(r["variants"])


def test_markdown_and_plot_are_written(bench: dict[str, Any]) -> None:
    md = bench["md"]
    assert md.startswith("# Serving benchmark")
    for heading in (
        "## Summary",
        "## Levels",
        "## Targets",
        "## Scale",
        *(f"### {v}" for v in VARIANTS),
    ):
        assert heading in md
    assert bench["json"]["command"] in md
    start = bench["json"]["host"]["python_probe_ms"]["start"]
    assert f"Python probe {start} ms at the start" in md
    files = sorted(p.name for p in bench["out"].iterdir())
    assert files == sorted(["serve.json", "serve.md"] + (["serve.png"] if HAVE_MPL else []))
    if HAVE_MPL:
        raw = (bench["out"] / "serve.png").read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", raw[16:24])
        assert width >= 800 and height >= 400


# --- the pure parts ----------------------------------------------------------------------------
def _level(offered: float, p99: float, failures: float = 0.0) -> dict[str, Any]:
    return {"offered_rps": offered, "rps": offered * 0.98, "p50_ms": p99 / 4, "p99_ms": p99,
            "failures": failures}  # fmt: skip


def _fake_server(capacity: float) -> tuple[list[float], Any]:
    asked: list[float] = []

    def run_level(offered: float) -> dict[str, Any]:
        asked.append(offered)
        p99 = 5.0 if offered <= capacity else 500.0
        return _level(offered, p99)

    return asked, run_level


def test_climb_stops_after_the_first_broken_level_and_narrows_the_bound() -> None:
    asked, run_level = _fake_server(capacity=1500)
    levels = climb([100, 500, 1000, 2000, 4000], run_level, refine=2)
    assert asked[:4] == [100, 500, 1000, 2000]  # 4000 never tried
    assert len(asked) == 6 and 1000 < asked[4] < 2000  # two bisection steps
    assert [lv["offered_rps"] for lv in levels] == sorted(asked)
    assert max_rps(levels) == pytest.approx(max(a for a in asked if a <= 1500) * 0.98)


def test_climb_bisects_until_the_bound_is_known_within_the_resolution() -> None:
    asked, run_level = _fake_server(capacity=1500)
    levels = climb([100, 500, 1000, 2000, 4000], run_level, refine=8, resolution=1.05)
    within = max(a for a in asked if a <= 1500)
    beyond = min(a for a in asked if a > 1500)
    assert beyond / within < 1.05  # narrowed to the resolution ...
    assert len(asked) <= 4 + 8  # ... with at most `refine` extra levels
    assert max_rps(levels) >= 1500 / 1.05 * 0.98


def test_climb_goes_below_the_ladder_for_a_slow_server() -> None:
    asked, run_level = _fake_server(capacity=30)
    levels = climb([100, 250], run_level, refine=0, min_rps=5)
    assert asked == [100, 50, 25]
    assert max_rps(levels) == pytest.approx(25 * 0.98)
    asked, run_level = _fake_server(capacity=1)
    assert max_rps(climb([100], run_level, refine=0, min_rps=20)) is None
    assert asked == [100, 50, 25]


def test_failures_break_the_ladder_and_do_not_count() -> None:
    levels = [_level(100, 5), _level(200, 5, failures=0.02)]
    assert max_rps(levels) == pytest.approx(98)
    asked: list[float] = []

    def run_level(offered: float) -> dict[str, Any]:
        asked.append(offered)
        return _level(offered, 5, failures=0.0 if offered < 200 else 0.05)

    climb([100, 200, 400], run_level, refine=0)
    assert asked == [100, 200]


def test_targets_pass_and_fail_at_their_thresholds() -> None:
    def v(name: str, best: float | None, **extra: Any) -> dict[str, Any]:
        return {"name": name, "max_rps_at_p99_50ms": best, **extra}

    at70 = {"p99_ms": TARGET_P99_AT_70PCT_MS}
    t = evaluate_targets(
        [v("ceiling", 4000), v("naive", 100), v("shipped", 2000, p99_at_70pct=at70)]
    )
    assert t["shipped_vs_ceiling"]["value"] == 0.5 and t["shipped_vs_ceiling"]["passed"]
    assert t["shipped_vs_naive"]["value"] == 20 and t["shipped_vs_naive"]["passed"]
    assert t["shipped_p99_at_70pct_ms"]["passed"] and t["all_passed"]
    t = evaluate_targets([v("ceiling", 4000), v("naive", 300), v("shipped", 1900,
                          p99_at_70pct={"p99_ms": 26})])  # fmt: skip
    assert not any(t[k]["passed"] for k in t if k != "all_passed") and not t["all_passed"]
    # A variant not run never passes.
    t = evaluate_targets([v("shipped", 1900)])
    assert t["shipped_vs_naive"]["value"] is None and not t["shipped_vs_naive"]["passed"]


def test_locust_csv_is_parsed(tmp_path: Path) -> None:
    csv = tmp_path / "x_stats.csv"
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
              "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
              "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%")  # fmt: skip
    csv.write_text(
        header + "\n"
        "POST,full-catalog,700,0,3,3.5,1,40,300,35.0,0,3,3,4,4,5,6,8,12,30,40,40\n"
        "POST,rerank,300,10,4,4.5,1,90,300,15.0,0.5,4,4,5,5,6,7,9,20,80,90,90\n"
        ",Aggregated,1000,10,3,3.8,1,90,300,50.0,0.5,3,3,4,4,5,6,8,15,70,90,90\n"
    )
    s = parse_locust_stats(csv)
    assert (s["requests"], s["failed_requests"], s["failures"]) == (1000, 10, 0.01)
    assert (s["rps"], s["p50_ms"], s["p99_ms"]) == (50.0, 3.0, 15.0)
    assert s["by_name"]["rerank"]["p99_ms"] == 20.0


WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/bench/constant
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.38ms    1.50ms  30.00ms   90.00%
    Req/Sec     7.86k   300.00     8.20k    80.00%
  Latency Distribution
     50%    6.14ms
     75%    7.00ms
     90%    8.10ms
     99%  850.00us
  78642 requests in 10.00s, 20.00MB read
  Non-2xx or 3xx responses: 5
Requests/sec:   7862.12
Transfer/sec:      2.00MB
"""


def test_wrk_output_is_parsed() -> None:
    w = parse_wrk(WRK_OUTPUT)
    assert w["rps"] == 7862.12 and w["p50_ms"] == 6.14 and w["p99_ms"] == 0.85
    assert w["requests"] == 78642 and w["non_2xx"] == 5
    assert 'wrk.method = "POST"' in wrk_script(b'{"history":["a"],"k":10}')


def test_offered_load_is_users_times_their_rate() -> None:
    for offered, per_user in ((100, 10), (6000, 10), (3, 10), (250, 7)):
        users, rate = users_for(offered, per_user)
        assert users >= 1 and users * rate == pytest.approx(offered)


def test_workload_mixes_full_catalog_and_rerank(tiny: dict[str, Path]) -> None:
    vocab = item_ids(60)
    histories = histories_from_data(tiny["data"], vocab=vocab)
    assert len(histories) == 200 and all(1 <= len(h) <= 50 for h in histories)
    w = build_workload(vocab, histories, WorkloadConfig(n_full=70, n_rerank=30, seed=1))
    assert w.meta["histories"] == "real" and len(w.full) == 70 and len(w.rerank) == 30
    for raw in w.full:
        body = orjson.loads(raw)
        assert set(body) == {"history", "k"} and body["k"] == 10
        assert body["history"] in histories
    for raw in w.rerank:
        body = orjson.loads(raw)
        assert 50 <= len(body["candidates"]) <= 60  # capped by the 60-item catalog
        assert set(body["candidates"]) <= set(vocab)
    # No data: synthetic histories from the catalog.
    w2 = build_workload(vocab, None, WorkloadConfig(n_full=20, n_rerank=10))
    assert w2.meta["histories"] == "synthetic"
    assert all(set(orjson.loads(b)["history"]) <= set(vocab) for b in w2.full)
    assert Workload.from_json(w.to_json()).rerank == w.rerank


def test_scale_entries_are_parsed(tiny: dict[str, Path]) -> None:
    b = tiny["bundle"]
    assert parse_scale([f"1M={b}:0.97", f"exact={b}"]) == [("1M", b, 0.97), ("exact", b, None)]
    with pytest.raises(ValueError):
        parse_scale([str(b)])
    with pytest.raises(ValueError):
        parse_scale([f"x={tiny['root'] / 'missing'}"])


def test_constant_answer_has_the_shape_of_a_recommendation() -> None:
    answer = orjson.loads(constant_answer(item_ids(60), "v1"))
    assert len(answer["items"]) == 10 and answer["strategy"] == "model"
    assert set(answer["items"][0]) == {"item_id", "score"} and answer["model_version"] == "v1"


def test_without_data_a_synthetic_catalog_and_speed_only_bundle(tmp_path: Path) -> None:
    from benchmarks.serve_bundles import RANDOM_INIT, synthetic_catalog
    from bundle import read_bundle

    data, bundle_dir = synthetic_catalog(tmp_path, n_items=200, n_users=50)
    b = read_bundle(bundle_dir)
    assert b.manifest.n_items == 200 and b.vocab[1:] == [f"i{i}" for i in range(1, 201)]
    assert b.manifest.item_encoding == "int8" and b.manifest.recipe["weights"] == RANDOM_INIT
    assert data.is_file() and int(b.popularity.sum()) == len(data.read_text().splitlines())
    assert synthetic_catalog(tmp_path, n_items=200, n_users=50) == (data, bundle_dir)  # reused


def test_pinning_falls_back_when_the_core_is_not_ours() -> None:
    from benchmarks.loadgen import can_pin, pinned

    assert pinned(["locust"], "4095") == ["locust"] and not can_pin("4095")
    assert pinned(["locust"], None) == ["locust"]
    if can_pin("0"):
        assert pinned(["locust"], "0") == ["taskset", "-c", "0", "locust"]


def test_default_scale_entries_grow_the_catalog_and_measure_recall(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    histories = [[f"i{i}", f"i{i + 1}", "not-in-catalog"] for i in range(1, 50)]
    entries = default_scale_entries(tiny["bundle"], tmp_path, histories, grow_to=300, seed=0)
    (shipped_label, shipped, shipped_recall), (grown_label, grown, grown_recall) = entries
    assert shipped == tiny["bundle"] and "60 items" in shipped_label
    assert json.loads((grown / "manifest.json").read_text())["n_items"] == 300
    assert "300 items" in grown_label
    # exact int8 scoring against exact fp32: only near-ties can differ
    assert shipped_recall is not None and grown_recall is not None
    assert 0.9 <= shipped_recall <= 1.0 and 0.9 <= grown_recall <= 1.0
