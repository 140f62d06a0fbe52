"""The live-catalog benchmark's pure parts: the item trace, leaks, probes, targets, report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from benchmarks.catalog_flush import catalog_matches
from benchmarks.catalog_phases import items_body, new_vectors
from benchmarks.catalog_probes import (
    MAX_CANDIDATES,
    Round,
    convergence,
    cover,
    names_again,
    names_any,
    names_none,
    rerank_probes,
    slowest,
)
from benchmarks.catalog_report import (
    FOLDIN_COMMAND,
    evaluate_targets,
    foldin_metrics,
    foldin_summary,
    headline,
    render_markdown,
)
from benchmarks.catalog_trace import (
    TracedAnswer,
    choose_items,
    count_leaks,
    item_counts,
    naming,
    parse_trace_line,
    read_item_trace,
)
from benchmarks.harness.trace import failed


def _a(t: float, items: tuple[str, ...], *, status: int = 200, host: int = 0) -> TracedAnswer:
    return TracedAnswer(t, 2.0, status, "live-a" if status == 200 else "", host, items)


# --- trace -----------------------------------------------------------------------------------
def test_trace_lines_with_items_are_read_back(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        '100.5,3.250,200,live-a,1,["12","B00,7"]\n'  # an ID with a comma stays one ID
        "100.6,12.000,503,,0,[]\n"
    )
    assert read_item_trace(path) == [
        TracedAnswer(100.5, 3.25, 200, "live-a", 1, ("12", "B00,7")),
        TracedAnswer(100.6, 12.0, 503, "", 0, ()),
    ]


def test_a_trace_line_without_an_item_list_is_refused() -> None:
    with pytest.raises(ValueError, match="without an item list"):
        parse_trace_line('1.0,2.0,200,live-a,0,{"a": 1}')
    with pytest.raises(ValueError):
        parse_trace_line("1.0,2.0,200,live-a,0")  # a trace written without LOCUST_TRACE_ITEMS


def test_item_counts_count_each_answer_once_and_only_200s() -> None:
    counts = item_counts([_a(1, ("a", "b", "a")), _a(2, ("a",)), _a(3, ("c",), status=503)])
    assert counts == Counter({"a": 2, "b": 1})


def test_choose_items_takes_the_most_named_then_fills_in_order() -> None:
    counts = Counter({"x": 5, "b": 3, "a": 3})
    assert choose_items(counts, 2) == ["x", "a"]  # ties by ID
    assert choose_items(counts, 5, fill=["", "b", "q", "r", "s"]) == ["x", "a", "b", "q", "r"]


def test_leaks_are_answers_started_inside_the_window_naming_an_item() -> None:
    items = {"gone-1", "gone-2"}
    answers = [
        _a(9.9, ("gone-1",)),  # before the fleet was clean: not a leak
        _a(10.0, ("keep", "gone-2"), host=1),
        _a(11.0, ("keep",)),
        _a(12.0, ("gone-1", "gone-2")),
        _a(13.0, ("gone-1",), status=500),  # not an answer naming anything
        _a(20.0, ("gone-1",)),  # once available again: not a leak
    ]
    leaks = count_leaks(answers, items, since=10.0, until=20.0)
    assert leaks["answers"] == 2 and leaks["answers_in_window"] == 4
    assert leaks["per_host"] == {"r1": 1, "r2": 1}
    assert leaks["items"] == 2 and leaks["first_at_s"] == 0.0
    assert dict(leaks["most_leaked"]) == {"gone-2": 2, "gone-1": 1}
    assert count_leaks(answers, items, since=14.0, until=20.0)["answers"] == 0
    assert len(naming(answers, items)) == 4 and failed(answers) == 1


# --- probes ----------------------------------------------------------------------------------
def test_cover_picks_the_answers_that_add_most_targets() -> None:
    answers = [["a", "z"], ["a", "b", "c"], ["c", "d"], ["z"]]
    assert cover(answers, {"a", "b", "c", "d"}, 5) == [1, 2]  # then nothing more to gain
    assert cover(answers, {"a", "b", "c", "d"}, 1) == [1]
    assert cover(answers, {"q"}, 3) == []


def test_rerank_probes_ask_for_every_item_in_chunks_the_service_accepts() -> None:
    items = [f"i{n}" for n in range(MAX_CANDIDATES + 5)]
    bodies = [orjson.loads(b) for b in rerank_probes(["h1"], items)]
    assert [len(b["candidates"]) for b in bodies] == [MAX_CANDIDATES, 5]
    assert all(b["k"] == len(b["candidates"]) and b["history"] == ["h1"] for b in bodies)
    assert [i for b in bodies for i in b["candidates"]] == items


def test_probe_conditions() -> None:
    gone = {"a", "b"}
    assert names_none(gone)([["x"], ["y", "z"]]) and not names_none(gone)([["x"], ["b"]])
    assert names_any(gone)([["x"], ["b"]]) and not names_any(gone)([["x"], []])
    back = names_again([["a", "x"], ["y"]], gone)  # probe 0 named "a" before, probe 1 none
    assert back([["q", "a"], []]) and not back([["x"], ["y"]])


def test_convergence_is_the_end_of_the_first_round_that_held() -> None:
    rounds = [
        Round(10.0, 10.1, False),
        Round(10.1, 10.3, True),
        Round(10.3, 10.4, False),
        Round(10.4, 10.5, True),
    ]
    c = convergence(rounds, since=10.0)
    assert c["propagation_s"] == 0.3 and c["propagation_lower_s"] == 0.1
    assert c["relapses"] == 1 and c["rounds"] == 4 and c["round_ms_max"] == 200.0
    assert c["first_round_s"] == 0.0
    never = convergence([Round(1.0, 2.0, False)], since=1.0)
    assert never["propagation_s"] is None and never["relapses"] == 0


def test_slowest_is_none_when_a_replica_never_converged() -> None:
    assert slowest([{"propagation_s": 0.2}, {"propagation_s": 0.5}]) == 0.5
    assert slowest([{"propagation_s": 0.2}, {"propagation_s": None}]) is None
    assert slowest([]) is None


# --- new items -------------------------------------------------------------------------------
def test_new_vectors_are_scaled_copies_with_small_noise() -> None:
    table = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    out = new_vectors(table, [3, 7], scale=1.05, noise=0.01, seed=0)
    assert out.shape == (2, 16) and out.dtype == np.float32
    for v, src in zip(out, table[[3, 7]], strict=True):
        cos = float(v @ src / np.linalg.norm(v) / np.linalg.norm(src))
        assert cos > 0.999
        assert np.linalg.norm(v) == pytest.approx(1.05 * np.linalg.norm(src), rel=0.01)
    assert np.array_equal(out, new_vectors(table, [3, 7], seed=0))  # reproducible


def test_items_body_is_the_admin_api_shape() -> None:
    body = orjson.loads(items_body(["new-1"], np.array([[0.5, -1.25]], dtype=np.float32)))
    assert body == {"items": [{"item_id": "new-1", "vector": [0.5, -1.25]}]}


# --- flush -----------------------------------------------------------------------------------
def test_catalog_matches_after_the_flush_only_when_it_is_all_back() -> None:
    before = {"revision": 4, "applied_revision": 4, "unavailable": 0, "items": {"live-a": 10}}
    assert catalog_matches({**before, "revision": 4}, before)
    assert catalog_matches({**before, "revision": 5}, before)
    assert not catalog_matches({**before, "revision": 0}, before)  # the flushed fleet state
    assert not catalog_matches({**before, "items": {}}, before)
    assert not catalog_matches("HTTP 503", before)


# --- results ---------------------------------------------------------------------------------
FOLDIN = {
    "dataset": "amazon-beauty",
    "command": "python -m benchmarks.foldin --data x",
    "git_commit": "abc",
    "protocol": "1. Leave-one-out per user ...",
    "items": 54542,
    "test_events": 812,
    "hr@10": 0.05,
    "ndcg@10": 0.031,
    "ndcg@10_ci95": [0.025, 0.037],
    "popularity_ndcg@10": 0.004,
    "chosen": {"ridge": 1.0, "target_rank": 20},
    "grid": [{"ridge": 1.0}],
    "bundle": {"settings": {"seed": 0}},
    "git_dirty": True,
    "foldin_vs_popularity_ndcg@10": {"diff": 0.027, "ci95": [0.02, 0.03], "p_value": 0.001},
}


def test_foldin_main_numbers_are_copied_with_a_note(tmp_path: Path) -> None:
    assert foldin_summary(tmp_path / "missing.json") is None
    path = tmp_path / "catalog-foldin.json"
    path.write_text(json.dumps(FOLDIN))
    f = foldin_summary(path)
    assert f is not None and FOLDIN_COMMAND in f["note"]
    assert f["ndcg@10"] == 0.031 and f["ndcg@10_ci95"] == [0.025, 0.037]
    assert f["chosen"] == {"ridge": 1.0, "target_rank": 20} and f["test_events"] == 812
    assert f["command"] == FOLDIN["command"] and f["git_dirty"] is True
    assert f["foldin_vs_popularity_ndcg@10"]["p_value"] == 0.001
    assert not {"protocol", "grid", "bundle"} & set(f)
    assert foldin_metrics(f) == "hr@10 0.0500; ndcg@10 0.0310; popularity_ndcg@10 0.0040"


def _results(**over: Any) -> dict[str, Any]:
    per = [
        {"replica": "r1", "propagation_s": 0.12, "propagation_lower_s": 0.05},
        {"replica": "r2", "propagation_s": 0.4, "propagation_lower_s": 0.3},
    ]
    r: dict[str, Any] = {
        "command": ".venv/bin/python -m benchmarks.catalog_live",
        "git_commit": "abc",
        "git_dirty": True,
        "cpu": "AMD EPYC",
        "cpu_count": 2,
        "wall_seconds": 200.0,
        "bundle": {"source": "speed-only bundle", "items": 12101},
        "pinning": {"replicas": "0", "locust": "1"},
        "capacity": {"offered_rps": 4000.0, "achieved_rps": 1500.0, "locust_limited": False},
        "load_fraction": 0.7,
        "load_rps": 1050.0,
        "warmup": {"answers": 10000, "answers_naming_chosen": 6000},
        "unavailable": {
            "items": 1000,
            "call": {"status": 200, "seconds": 0.05},
            "per_replica": per,
            "unavailable_propagation_s_max": 0.4,
            "answers_naming_before": 3000,
            "answers_naming_while_propagating": 200,
            "unavailable_leaks": 0,
            "leaks": {"window_s": 25.0, "answers_in_window": 25000},
            "requests": 40000,
            "failed_requests": 0,
            "restored_s_max": 0.3,
        },
        "new_items": {
            "body_bytes": 700000,
            "call": {"status": 200, "seconds": 0.3},
            "per_replica": per,
            "new_items_propagation_s_max": 0.4,
            "load_answers_naming_new_after": 500,
            "load_answers_after": 15000,
            "requests": 20000,
            "failed_requests": 0,
        },
        "flush": {
            "requests": 30000,
            "flush_failed_requests": 0,
            "flush_heal_s": 1.2,
            "back_s": {"heal_lock": 0.9, "active_key": 1.0, "archive": 1.1, "catalog": 1.2},
            "heals_before": [0, 0],
            "heals_after": [1, 0],
        },
        "late_replica": {
            "ready_s": 8.0,
            "serving_s": 8.1,
            "late_replica_ready_s": 8.1,
            "probe_names_new_items": True,
        },
        "foldin": None,
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            r[section] = {**r[section], name: value}
        else:
            r[section] = value
    return r


def test_targets_pass_on_good_numbers() -> None:
    t = evaluate_targets(_results())
    assert t["all_passed"], {k: v for k, v in t.items() if k != "all_passed" and not v["passed"]}
    assert len(t) == 9


@pytest.mark.parametrize(
    ("override", "failing"),
    [
        ({"unavailable__unavailable_propagation_s_max": 1.2}, "unavailable_propagation_s"),
        ({"unavailable__unavailable_propagation_s_max": None}, "unavailable_propagation_s"),
        ({"unavailable__unavailable_leaks": 1}, "unavailable_leaks"),
        ({"unavailable__failed_requests": 3}, "unavailable_failed"),
        ({"new_items__new_items_propagation_s_max": None}, "new_items_propagation_s"),
        ({"new_items__failed_requests": 1}, "new_items_failed"),
        ({"flush__flush_failed_requests": 2}, "flush_failed"),
        ({"flush__flush_heal_s": 5.5}, "flush_heal_s"),
        ({"late_replica": {"late_replica_ready_s": None, "error": "exited"}}, "late_replica_ready"),
    ],
)
def test_each_target_fails_on_its_own_number(override: dict[str, Any], failing: str) -> None:
    t = evaluate_targets(_results(**override))
    assert not t["all_passed"]
    assert [k for k, v in t.items() if k != "all_passed" and not v["passed"]] == [failing]


def test_markdown_has_the_measurements_and_the_targets_table() -> None:
    r = _results()
    r["targets"] = evaluate_targets(r)
    md = render_markdown(r)
    assert md.startswith("# Live-catalog benchmark")
    assert "(uncommitted changes)" in md and "AMD EPYC (2 cores)" in md
    assert "| unavailable: propagation per replica | r1 0.05-0.12 s, r2 0.3-0.4 s |" in md
    assert "| flush: heals per replica (before → after) | r1 0 → 1, r2 0 → 0 |" in md
    assert "began) / active key / archive / catalog back | 0.9 / 1.0 / 1.1 / 1.2 s |" in md
    assert "| unavailable_leaks |" in md and "All targets: PASS." in md
    assert "fold-in" not in md


def test_markdown_names_the_foldin_command_when_its_numbers_are_there(tmp_path: Path) -> None:
    path = tmp_path / "catalog-foldin.json"
    path.write_text(json.dumps(FOLDIN))
    r = _results(foldin=foldin_summary(path), late_replica__late_replica_ready_s=None)
    r["targets"] = evaluate_targets(r)
    md = render_markdown(r)
    assert FOLDIN_COMMAND in md and "ndcg@10 0.0310" in md and "Leave-one-out" not in md
    assert "| late_replica_ready |" in md and "**FAIL**" in md and "All targets: FAIL." in md


def test_the_issues_figures_are_at_the_top_level():
    results = {
        "unavailable": {
            "unavailable_propagation_s_max": 0.1,
            "unavailable_leaks": 0,
            "failed_requests": 2,
        },
        "new_items": {"new_items_propagation_s_max": 0.3, "failed_requests": 1},
        "flush": {"flush_failed_requests": 0, "flush_heal_s": 2.0},
        "late_replica": {"late_replica_ready_s": 1.6},
    }
    assert headline(results) == {
        "unavailable_propagation_s_max": 0.1,
        "unavailable_leaks": 0,
        "failed_requests": 3,
        "new_items_propagation_s_max": 0.3,
        "flush_failed_requests": 0,
        "flush_heal_s": 2.0,
        "late_replica_ready_s": 1.6,
    }
