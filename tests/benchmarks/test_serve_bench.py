"""The serving benchmark harness: end to end on a tiny bundle, and its pure parts."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from prometheus_client import generate_latest

from benchmarks.apps import constant_answer
from benchmarks.harness.load import parse_locust_stats, parse_wrk, users_for, wrk_script
from benchmarks.harness.servers import batch_counters, process_tree, uvicorn_command
from benchmarks.serve import main
from benchmarks.serve_ladder import climb, max_rps
from benchmarks.serve_report import render_markdown
from benchmarks.serve_scale import default_scale_entries, parse_scale
from benchmarks.serve_sequential import (
    run_sequential,
    sequential_bodies,
    sequential_summary,
    server_timing_ms,
)
from benchmarks.serve_targets import (
    TARGET_P50_EXCESS_MS,
    TARGET_P99_AT_70PCT_MS,
    TARGET_SEQ_CLIENT_P50_MS,
    TARGET_SEQ_SERVER_P50_MS,
    TARGET_VS_CEILING,
    evaluate_targets,
    p50_vs_ceiling,
    workers_comparison,
)
from benchmarks.serve_variants import VARIANTS, batch_mean
from benchmarks.workload import Workload, WorkloadConfig, build_workload, histories_from_data
from models.synthetic import SyntheticConfig, write_synthetic
from service.metrics import Metrics
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
        "--scale", f"tiny={tiny['bundle']}:0.9", "--scale-rps", "20", "--sequential", "40",
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
            assert level["failures"] == 0, v["name"]  # 40 requests/s: every one answered
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
    # Two workers: the real multi-worker entry, counted as a whole process tree.
    two = by["shipped_2w"]
    assert two["workers"] == 2 and two["server_cpu"] == "0-1" and "--workers 2" in two["server"]
    assert two["env"] == {"BATCH_MAX_SIZE": "32", "WORKERS": "2"}
    assert r["workers"]["two_workers"]["variant"] == "shipped_2w"
    assert r["workers"]["one_worker"]["variant"] == "shipped"
    # Requests per model call, from the service's own histogram: only where one process calls
    # a model (no batching at BATCH_MAX_SIZE=1).
    assert all(lv["batch_mean"] >= 1 for lv in by["shipped"]["levels"])
    assert all(lv["batch_mean"] == 1 for lv in by["student_fp32"]["levels"])
    for name in ("ceiling", "naive", "shipped_2w"):
        assert all(lv["batch_mean"] is None for lv in by[name]["levels"]), name


def test_sequential_is_measured_on_shipped(bench: dict[str, Any]) -> None:
    seq = bench["json"]["sequential"]
    assert seq["requests"] == 40 and seq["n"] + seq["failures"] == 40 and seq["failures"] == 0
    assert seq["server_timing_missing"] == 0 and seq["reconnects"] == 0
    assert 0 < seq["server_p50_ms"] <= seq["server_p99_ms"]
    assert seq["server_p50_ms"] < seq["client_p50_ms"] <= seq["client_p99_ms"]
    assert set(seq["by_kind"]) <= {"full-catalog", "rerank"}
    assert "sequential" not in bench["json"]["variants"][3]  # lifted to the top level


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
    assert r["targets"] == evaluate_targets(r["variants"], sequential=r["sequential"])
    assert r["p50_vs_ceiling"] == p50_vs_ceiling(r["variants"])


def test_markdown_and_plot_are_written(bench: dict[str, Any]) -> None:
    md = bench["md"]
    assert md.startswith("# Serving benchmark")
    for heading in (
        "## Summary",
        "## Levels",
        "## Targets",
        "## Scale",
        "## Sequential: one caller, one keep-alive connection",
        "## p50 against the ceiling, same offered load",
        "## Workers: 1 against 2 (no target)",
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
    best = max_rps(levels)
    assert best is not None and best >= 1500 / 1.05 * 0.98


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


def _variant(name: str, best: float | None, levels: list[dict[str, Any]] | None = None,
             **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "max_rps_at_p99_50ms": best, "levels": levels or [], **extra}


def _p50_level(offered: float, p50: float | None) -> dict[str, Any]:
    return {**_level(offered, 10.0), "p50_ms": p50}


def _passing_run(shipped_p50: float = 3.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Variants and a sequential summary that meet every target exactly at its threshold."""
    ceiling = _variant("ceiling", 4000, [_p50_level(o, 1.0) for o in (100, 500, 1000, 2000)])
    shipped = _variant(
        "shipped", 2800, [_p50_level(o, shipped_p50) for o in (100, 500, 1000, 2000)],
        p99_at_70pct={"p99_ms": TARGET_P99_AT_70PCT_MS},
    )  # fmt: skip
    seq = {"server_p50_ms": TARGET_SEQ_SERVER_P50_MS, "client_p50_ms": TARGET_SEQ_CLIENT_P50_MS}
    return [ceiling, _variant("naive", 280), shipped], seq


def test_targets_pass_at_their_thresholds() -> None:
    variants, seq = _passing_run()
    t = evaluate_targets(variants, sequential=seq)
    assert t["shipped_vs_ceiling"]["value"] == TARGET_VS_CEILING == 0.7
    assert t["shipped_vs_naive"]["value"] == 10
    assert t["shipped_p50_excess_ms"]["value"] == TARGET_P50_EXCESS_MS == 2.0
    assert "(3 compared)" in t["shipped_p50_excess_ms"]["what"]  # 100, 500, 1000 ≤ 1400
    assert all(t[k]["passed"] for k in t if k != "all_passed") and t["all_passed"]


def test_targets_fail_just_beyond_their_thresholds() -> None:
    variants, _ = _passing_run(shipped_p50=3.5)
    variants[0]["max_rps_at_p99_50ms"] = 4001  # shipped / ceiling just under 0.7
    variants[1]["max_rps_at_p99_50ms"] = 281
    variants[2]["p99_at_70pct"] = {"p99_ms": 26}
    seq = {"server_p50_ms": 1.6, "client_p50_ms": 3.1}
    t = evaluate_targets(variants, sequential=seq)
    assert not any(t[k]["passed"] for k in t if k != "all_passed") and not t["all_passed"]
    assert t["shipped_p50_excess_ms"]["value"] == 2.5
    # Judged on the ratio itself, not on a rounded one: 0.69983 is not 0.7.
    assert t["shipped_vs_ceiling"]["value"] == 0.6998


def test_targets_never_pass_on_what_was_not_measured() -> None:
    t = evaluate_targets([_variant("shipped", 1900)])
    for key in ("shipped_vs_naive", "shipped_vs_ceiling", "shipped_p50_excess_ms",
                "sequential_server_p50_ms", "sequential_client_p50_ms"):  # fmt: skip
        assert t[key]["value"] is None and not t[key]["passed"], key
    assert not t["all_passed"]


def test_p50_is_compared_per_level_up_to_half_of_shipped_max() -> None:
    ceiling = _variant("ceiling", 5000, [_p50_level(o, 2.0) for o in (100, 250, 500, 1000)])
    shipped = _variant("shipped", 1000, [
        _p50_level(100, 3.0), _p50_level(250, 5.0), _p50_level(350, 3.0),  # 350: refinement
        _p50_level(500, 4.0), _p50_level(1000, 9.0),
    ])  # fmt: skip
    cmp = p50_vs_ceiling([ceiling, shipped])
    assert cmp["up_to_offered"] == 500 and cmp["shipped_max_rps"] == 1000
    rows = {r["offered"]: r for r in cmp["levels"]}
    assert sorted(rows) == [100, 250, 350, 500]  # 1000 is beyond half of the max
    assert rows[100] == {"offered": 100, "shipped_p50_ms": 3.0, "ceiling_p50_ms": 2.0,
                         "excess_ms": 1.0, "passed": True}  # fmt: skip
    assert rows[250]["excess_ms"] == 3.0 and rows[250]["passed"] is False
    assert rows[500]["excess_ms"] == 2.0 and rows[500]["passed"] is True
    # The ceiling never ran 350 rps: said so, not interpolated, and not counted either way.
    assert rows[350]["ceiling_p50_ms"] is None and rows[350]["passed"] is None
    assert "did not run" in rows[350]["note"]
    t = evaluate_targets([ceiling, shipped])
    assert t["shipped_p50_excess_ms"]["value"] == 3.0 and not t["shipped_p50_excess_ms"]["passed"]
    assert "(3 compared)" in t["shipped_p50_excess_ms"]["what"]
    # No max rps for shipped: nothing to compare, and the target cannot pass.
    empty = p50_vs_ceiling([ceiling, _variant("shipped", None, [_p50_level(100, 3.0)])])
    assert empty["levels"] == [] and empty["note"] == "shipped has no max rps"


def test_sequential_summary_from_a_list_of_timings() -> None:
    client = [float(i) for i in range(1, 101)]  # 1..100 ms
    server: list[float | None] = [c / 2 for c in client]
    s = sequential_summary(server, client)
    assert s["n"] == s["requests"] == 100 and s["failures"] == 0 and s["statuses"] == {}
    assert s["client_p50_ms"] == 50.5 and s["server_p50_ms"] == 25.25
    assert s["client_p90_ms"] == pytest.approx(90.1) and s["client_p99_ms"] == pytest.approx(99.01)
    assert s["client_mean_ms"] == 50.5
    # Failures are counted, never timed; an answer without Server-Timing is counted too.
    statuses = [200] * 98 + [503, 0]
    server[0] = None
    kinds = ["rerank" if i % 4 == 0 else "full-catalog" for i in range(100)]
    s = sequential_summary(server, client, statuses=statuses, kinds=kinds)
    assert s["n"] == 98 and s["failures"] == 2 and s["statuses"] == {"0": 1, "503": 1}
    assert s["client_p50_ms"] == 49.5 and s["server_timing_missing"] == 1
    assert s["by_kind"]["rerank"]["n"] == 25 and s["by_kind"]["full-catalog"]["n"] == 73
    assert sequential_summary([], [])["client_p50_ms"] is None
    with pytest.raises(ValueError):
        sequential_summary([1.0], [1.0, 2.0])


def test_server_timing_header_is_parsed() -> None:
    assert server_timing_ms("app;dur=1.3") == 1.3
    assert server_timing_ms('db;dur=4, app;desc="x";dur="0.7"') == 0.7
    assert server_timing_ms("db;dur=4") is None and server_timing_ms(None) is None
    assert server_timing_ms("app;dur=abc") is None


def test_sequential_bodies_mix_like_the_locustfile() -> None:
    w = Workload(full=[b"f1", b"f2"], rerank=[b"r1"])
    bodies = sequential_bodies(w, 2000, seed=1)
    assert len(bodies) == 2000 and bodies == sequential_bodies(w, 2000, seed=1)
    share = sum(k == "rerank" for k, _ in bodies) / 2000
    assert 0.26 < share < 0.34
    assert {b for k, b in bodies if k == "rerank"} == {b"r1"}
    assert {b for k, b in bodies if k == "full-catalog"} == {b"f1", b"f2"}


class _TimedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    connections: ClassVar[set[tuple[str, int]]] = set()

    def do_POST(self) -> None:
        _TimedHandler.connections.add(self.client_address)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"items":[]}'
        self.send_response(200 if self.path == "/recommend" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Server-Timing", "app;dur=0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def timed_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TimedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(60)
def test_sequential_client_keeps_one_connection(timed_server: str) -> None:
    _TimedHandler.connections.clear()
    bodies = [("full-catalog", b'{"history":["i1"],"k":10}')] * 30
    before = os.sched_getaffinity(0)
    seq = run_sequential(timed_server, "/recommend", bodies, warmup=5, cpu="0")
    assert os.sched_getaffinity(0) == before  # the pin is undone
    assert seq["n"] == 30 and seq["failures"] == 0 and seq["reconnects"] == 0
    assert seq["server_p50_ms"] == 0.4 and seq["client_p50_ms"] > 0
    assert len(_TimedHandler.connections) == 1  # warm-up and measurement on one connection
    assert seq["client_pinned"] == (0 in before)
    missing = run_sequential(timed_server, "/nowhere", bodies[:3], warmup=0, cpu=None)
    assert missing["failures"] == 3 and missing["statuses"] == {"404": 3}


def test_workers_comparison_says_how_the_machine_limits_it() -> None:
    def at(rps: float, server: float, locust: float) -> dict[str, Any]:
        return {**_level(rps, 20.0), "rps": rps, "server_cpu": server, "locust_cpu": locust}

    one = _variant("shipped", 2000, [at(2000, 0.95, 0.4)], workers=1, server_cpu="0")
    two = _variant("shipped_2w", 3000, [at(3000, 1.5, 0.45), at(3500, 1.9, 0.1)], workers=2,
                   server_cpu="0-1")  # fmt: skip
    two["levels"][1]["p99_ms"] = 80.0  # beyond the bound: not the max
    w = workers_comparison([one, two], load_cpu="1", cores=2)
    assert w is not None and w["ratio"] == 1.5 and w["load_cpu_shared"]
    assert w["two_workers"]["cores_busy_at_max"] == 1.95
    assert w["one_worker"]["server_cores_busy_at_max"] == 0.95
    assert "shares core(s) 1" in w["note"] and "lower bound" in w["note"]
    apart = workers_comparison([one, {**two, "server_cpu": "2-3"}], load_cpu="1", cores=4)
    assert apart is not None and not apart["load_cpu_shared"] and "shares" not in apart["note"]
    assert workers_comparison([one], load_cpu="1") is None


def test_two_workers_run_uvicorn_with_workers() -> None:
    assert "--workers" not in uvicorn_command("service.main:create_app", 8000)
    cmd = uvicorn_command("service.main:worker_app", 8000, 2)
    assert cmd[cmd.index("--workers") + 1] == "2"


def test_a_server_is_counted_with_its_child_processes() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
    finally:
        child.kill()
        child.wait()


def _results(**over: Any) -> dict[str, Any]:
    """A serve.json as main writes it, with made-up numbers, for the report alone."""
    variants, seq = _passing_run()
    variants[2]["p99_at_70pct"].update(_level(1960, TARGET_P99_AT_70PCT_MS))
    for v in variants:
        v.update(description=v["name"], rss_mb=100.0)
        for lv in v["levels"]:
            lv.update(server_cpu=0.5, locust_cpu=0.3, locust_limited=False)
    two = _variant("shipped_2w", 3500, [{**_p50_level(3570, 4.0), "server_cpu": 1.4,
                   "locust_cpu": 0.5, "locust_limited": False}], description="2w",
                   workers=2, server_cpu="0-1", rss_mb=200.0)  # fmt: skip
    variants[2].update(workers=1, server_cpu="0")
    variants.append(two)
    sequential = {
        **sequential_summary([1.2] * 10, [2.4] * 10, kinds=["full-catalog"] * 10),
        **seq, "achieved_rps": 400.0, "reconnects": 0, "warmup_requests": 50,
        "client": "http.client", "client_cpu": "1", "client_pinned": True,
        "mix": {"full_catalog": 0.7, "rerank": 0.3}, "server_time": "Server-Timing",
        "client_time": "round trip",
    }  # fmt: skip
    results = {
        "command": "python -m benchmarks.serve", "git_commit": "0" * 40, "git_dirty": False,
        "cpu": "Test CPU", "cpu_count": 2, "wall_seconds": 1.0,
        "pinning": {"server_cpu": "0", "load_cpu": "1", "server_pinned": True,
                    "load_pinned": True, "workers_cpu": "0-1"},
        "bundle": {"path": "b", "version": "v1", "n_items": 60, "dim": 8,
                   "item_encoding": "int8"},
        "inputs": {"bundle_source": "--bundle", "histories_from": "data"},
        "load": {"tool": "locust", "duration_s": 1, "user_rps": 10,
                 "mix": {"full_catalog": 0.7, "rerank": 0.3},
                 "workload": {"histories": "real", "mean_history_len": 8.8},
                 "stop_rule": "never"},
        "variants": variants, "sequential": sequential,
        "p50_vs_ceiling": p50_vs_ceiling(variants),
        "workers": workers_comparison(variants, load_cpu="1", cores=2),
        "ceiling_wrk": None, "scale": [],
        "targets": evaluate_targets(variants, sequential=sequential), "notes": ["a note"],
    }  # fmt: skip
    return {**results, **over}


def test_markdown_shows_sequential_per_level_p50_workers_and_targets() -> None:
    r = _results()
    md = render_markdown(r)
    seq = md.split("## Sequential: one caller, one keep-alive connection")[1].split("## ")[0]
    assert "| all | server (Server-Timing) | 10 | 1.50 |" in seq  # the summary's own p50
    assert "| full-catalog | round trip | 10 | 2.40 | 2.40 | 2.40 |" in seq
    p50 = md.split("## p50 against the ceiling, same offered load")[1].split("## ")[0]
    assert "| 100 | 3 | 1 | +2 | PASS |" in p50 and "offered ≤ 1,400" in p50
    workers = md.split("## Workers: 1 against 2 (no target)")[1].split("## ")[0]
    assert "2 workers / 1: **1.25** on a 2-core machine" in workers
    assert "| shipped_2w | 2 | 0-1 | 3,500 |" in workers and "shares core(s) 1" in workers
    targets = md.split("## Targets")[1]
    for key in r["targets"]:
        if key != "all_passed":
            assert f"| {key} |" in targets, key
    assert "All targets: PASS." in targets
    # A ceiling level missing at an offered load shipped ran: the row says so.
    r["variants"][0]["levels"] = r["variants"][0]["levels"][1:]  # the ceiling without 100
    r["p50_vs_ceiling"] = p50_vs_ceiling(r["variants"])
    assert "| 100 | 3 | - | - | the ceiling did not run this offered load: not compared |" in (
        render_markdown(r)
    )
    # Without the new measurements the report still renders, without their sections.
    md = render_markdown(_results(sequential=None, workers=None))
    assert "## Sequential" not in md and "## Workers" not in md


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


def test_batch_counters_are_read_from_the_service_metrics() -> None:
    metrics = Metrics()
    for size in (3, 5, 10):
        metrics.batch_size.observe(size)
    text = generate_latest(metrics.registry).decode()

    assert batch_counters(text) == (18.0, 3.0)
    assert batch_counters("# an app without the metric\nother_total 4.0\n") is None
    assert batch_mean((18.0, 3.0), (58.0, 7.0)) == 10.0
    assert batch_mean((18.0, 3.0), (18.0, 3.0)) is None  # no model call in between
    assert batch_mean(None, (18.0, 3.0)) is None


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
    from benchmarks.harness.pinning import can_pin, pinned

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
