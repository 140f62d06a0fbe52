"""The fold-in benchmark's plumbing (`benchmarks.foldin`) on tiny synthetic data: the held-out
split, the baselines' ranks, the service path, and one whole run of seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bundle
from benchmarks.foldin import (
    Events,
    answer_ranks,
    folded,
    hold_out,
    main,
    popularity_ranks,
    sample,
    summary,
    write_interactions,
)
from benchmarks.service_eval import service_options
from models.foldin import FoldInConfig, fold_in
from models.readers import read_interactions
from models.synthetic import SyntheticConfig, write_synthetic
from service.loading import load_model
from tests.factories import make_bundle_dir
from tests.models.test_foldin import shoppers, two_kinds


def catalog_sequences(n_users: int = 200, n_items: int = 50, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [
        [f"p{i}" for i in rng.integers(0, n_items, size=int(rng.integers(3, 9)))]
        for _ in range(n_users)
    ]


def test_hold_out_removes_a_seeded_share_of_the_items_from_the_data() -> None:
    sequences = catalog_sequences()
    items = {i for s in sequences for i in s}
    split = hold_out(sequences, share=0.2, seed=1)
    assert len(split.held_out) == round(0.2 * len(items))
    assert split.held_out <= items
    assert not split.held_out & {i for s in split.reduced for i in s}
    assert split.reduced == [[i for i in s if i not in split.held_out] for s in sequences]
    assert hold_out(sequences, share=0.2, seed=1).held_out == split.held_out
    assert hold_out(sequences, share=0.2, seed=2).held_out != split.held_out


def test_events_are_the_held_out_leave_one_out_targets() -> None:
    sequences = [["a", "b", "c", "h1"], ["a", "h2", "b", "c"], ["h1", "b", "h2", "a"]]
    split = hold_out(sequences, share=0.4, seed=0)  # 2 of the 5 items
    held = split.held_out
    # fold-in only sees the training period: seq[:-2], held-out items included
    assert split.train_period == [["a", "b"], ["a", "h2"], ["h1", "b"]]
    assert split.test.targets == [s[-1] for s in sequences if s[-1] in held]
    assert split.test.histories == [s[:-1] for s in sequences if s[-1] in held]
    assert split.valid.targets == [s[-2] for s in sequences if s[-2] in held]
    assert split.valid.histories == [s[:-2] for s in sequences if s[-2] in held]
    # the other events, to measure what new items cost answers the bundle could give
    assert split.test_known.targets == [s[-1] for s in sequences if s[-1] not in held]
    assert split.valid_known.histories == [s[:-2] for s in sequences if s[-2] not in held]
    assert len(split.test) + len(split.test_known) == len(sequences)


def test_hold_out_needs_three_interactions_per_user() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        hold_out([["a", "b"]], share=0.5, seed=0)


def test_sample_is_seeded_and_keeps_event_order() -> None:
    events = Events([[str(i)] for i in range(100)], [f"t{i}" for i in range(100)])
    drawn = sample(events, 10, seed=4)
    assert len(drawn) == 10 and drawn == sample(events, 10, seed=4)
    rows = [int(h[0]) for h in drawn.histories]
    assert rows == sorted(rows) and drawn.targets == [f"t{i}" for i in rows]
    assert sample(events, 500, seed=4) is events


def test_reduced_data_reads_back_as_the_pipeline_reads_it(tmp_path: Path) -> None:
    sequences = [["a", "b", "c"], ["c", "a", "d", "e"], ["b", "d", "a"]]
    write_interactions(tmp_path / "r.txt", ["u1", "u2", "u3"], sequences)
    data = read_interactions(tmp_path / "r.txt", min_interactions=3)
    assert data.user_ids == ["u1", "u2", "u3"]
    assert [[data.vocab[i] for i in s] for s in data.sequences] == sequences


def test_popularity_ranks_exclude_the_history_and_break_ties_by_catalog_order() -> None:
    catalog = ["", "a", "b", "c", "d"]
    train = [["a", "a", "a", "b", "b", "c", "c", "d"]]  # a 3, b 2, c 2, d 1
    events = Events(histories=[[], ["a"], ["a", "b"], []], targets=["c", "c", "d", "a"])
    # c ties with b and comes after it; with a seen, only b is ahead; d behind c; a first
    assert popularity_ranks(train, catalog, events).tolist() == [2, 1, 1, 0]


def test_summary_counts_misses_as_zero_with_an_interval_around_the_mean() -> None:
    ranks = np.array([0, 1, -1, 12, -1, 9], dtype=np.int64)
    s = summary(ranks, prefix="x_")
    assert s["x_hr@10"] == pytest.approx(3 / 6)
    ndcg = (1.0 + 1 / np.log2(3) + 1 / np.log2(11)) / 6
    assert s["x_ndcg@10"] == pytest.approx(ndcg)
    lo, hi = s["x_ndcg@10_ci95"]
    assert lo <= ndcg <= hi


def test_folded_vectors_are_answered_by_the_service_and_the_bundle_alone_never(
    tmp_path: Path,
) -> None:
    bundle_dir = make_bundle_dir(tmp_path / "v1", shared_items=True)
    b = bundle.read_bundle(bundle_dir)
    kind_a, _ = two_kinds(b)
    result = fold_in(
        b, [[*h, "new-a"] for h in shoppers(kind_a, 20, seed=0)], FoldInConfig(target_rank=3)
    )
    histories = shoppers(kind_a, 30, seed=1)
    events = Events(histories=histories, targets=["new-a"] * len(histories))
    model = load_model(bundle_dir, service_options())
    assert (answer_ranks(model, events) == -1).all()
    ranks = answer_ranks(folded(model, result), events)
    assert (ranks >= 0).mean() > 0.8


def test_main_writes_the_report_and_its_table(tmp_path: Path) -> None:
    data = tmp_path / "synthetic.txt"
    write_synthetic(data, SyntheticConfig(n_users=300, n_items=80, n_topics=4, min_len=5,
                                          max_len=15, seed=3))  # fmt: skip
    out = tmp_path / "results" / "foldin.json"
    argv = ["--data", str(data), "--out", str(out), "--work", str(tmp_path / "work"),
            "--recipe", "demo", "--epochs", "1", "--held-out", "0.2", "--no-progress",
            "--ridges", "0.3", "3", "--target-ranks", "1", "10", "--l2s", "0.1", "1",
            "--negatives", "400", "--known-sample", "50"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["held_out_items"] == 16
    assert r["test_events"] > 0 and r["valid_events"] > 0
    assert r["negative_positions"] == 400 and r["negative_weight"] > 1
    assert [g["method"] for g in r["grid"]] == ["lsq"] * 4 + ["softmax"] * 2
    assert r["bundle_hr@10"] == 0.0
    assert r["by_events"]["bundle"]["held_out_targets_hr@10"] == 0.0
    assert r["by_events"]["bundle"]["new_item_slot_share"] == 0.0
    assert r["test_events"] + r["test_known_events"] == 300
    # each method's choices on validation, on test by events; the better one is the default
    assert r["chosen"]["on"] == "valid_all_ndcg@10"
    methods = r["methods"]
    assert methods.keys() == {"lsq", "softmax"}
    assert methods["softmax"]["chosen"]["l2"] in (0.1, 1.0)
    assert methods["lsq"]["held_out_choice"]["on"] == "valid_ndcg@10"
    best = max(methods.values(), key=lambda m: m["chosen"]["valid_all_ndcg@10"])
    assert r["chosen"]["method"] == best["chosen"]["method"]
    assert {"lsq", "lsq_held_out_choice", "softmax", "softmax_held_out_choice", "bundle"} == (
        r["by_events"].keys()
    )
    assert r["by_events"][r["chosen"]["method"]]["held_out_targets_ndcg@10"] == r["ndcg@10"]
    assert "diff" in r["softmax_vs_lsq_all_ndcg@10"]
    assert {"hr@10", "ndcg@10", "popularity_hr@10", "popularity_ndcg@10", "cpu",
            "git_commit", "wall_seconds", "chosen"} <= r.keys()  # fmt: skip
    assert r["bundle"]["reused"] is False
    markdown = out.with_suffix(".md").read_text()
    assert "| bundle alone | 0.0000 |" in markdown
    assert "| softmax (l2 " in markdown and "| least squares (ridge " in markdown
    # a second run with the same settings reuses the bundle
    assert main(argv) == 0
    assert json.loads(out.read_text())["bundle"]["reused"] is True
