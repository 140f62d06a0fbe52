"""The compression benchmark harness, on tiny synthetic data with the demo recipe."""

from __future__ import annotations

import copy
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compress import (
    RECIPES,
    TARGET_QUANT_LOSS,
    _clear_previous,
    build_config,
    evaluate_targets,
    main,
    parse_sets,
    render_markdown,
    render_plot,
)
from models.synthetic import SyntheticConfig, write_synthetic

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
SYNTH = SyntheticConfig(n_users=300, n_items=60, n_topics=4, min_len=5, max_len=15, seed=3)
# The demo recipe, shrunk further so the whole pipeline takes seconds.
TINY_SETS = [
    "max_len=15",
    "teacher_dim=32", "teacher_heads=2", "teacher_head_dim=16", "teacher_ffn=64",
    "teacher_epochs=2",
    "student_dim=16", "student_heads=4", "student_head_dim=4", "student_ffn=32",
    "student_epochs=2",
    "finetune_epochs=1", "batch_size=64", "lr=5e-3", "importance_batches=2",
    "n_golden=2", "latency_budget_s=0.01", "progress=false",
]  # fmt: skip
STAGE_KEYS = {
    "name", "params", "bytes", "bytes_kind", "hr@10", "ndcg@10", "mrr@10",
    "encoder_us_b1", "encoder_us_b32", "train_seconds",
}  # fmt: skip
TOP_KEYS = {
    "dataset", "command", "git_commit", "git_dirty", "served_stage", "device", "seed", "cpu",
    "threads", "wall_seconds", "recipe", "references", "popularity", "stages", "targets",
}  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench")
    data = root / "tiny-shop.txt"
    write_synthetic(data, SYNTH)
    argv = [
        "--data", str(data), "--out", str(root / "results"), "--work", str(root / "work"),
        "--recipe", "demo", "--sampled", "uniform",
    ]  # fmt: skip
    for s in TINY_SETS:
        argv += ["--set", s]
    if not HAVE_MPL:
        argv.append("--no-plot")
    assert main(argv) == 0
    results_dir = root / "results"
    return {
        "root": root,
        "argv": argv,
        "results_dir": results_dir,
        "json": json.loads((results_dir / "compress-tiny-shop.json").read_text()),
        "report": json.loads((root / "work" / "tiny-shop" / "bench-demo-report.json").read_text()),
    }


def test_json_has_every_required_key_and_stage(bench: dict[str, Any]) -> None:
    r = bench["json"]
    assert set(r) >= TOP_KEYS
    assert r["dataset"] == "tiny-shop"
    assert "benchmarks.compress" in r["command"] and "--recipe demo" in r["command"]
    assert r["git_commit"] is None or len(r["git_commit"]) == 40
    assert r["device"] == "cpu" and r["seed"] == 0
    assert r["threads"] >= 1 and r["wall_seconds"] > 0
    names = [s["name"] for s in r["stages"]]
    assert names == ["teacher", "student", "pruned", "pruned+int8"]
    assert r["served_stage"] == "pruned+int8"
    for s in r["stages"]:
        assert set(s) >= STAGE_KEYS, s["name"]
        for k in ("hr@10", "ndcg@10", "mrr@10"):
            assert 0.0 <= s[k] <= 1.0
        assert s["mrr@10"] <= s["ndcg@10"] <= s["hr@10"]
        assert s["encoder_us_b1"] > 0 and s["encoder_us_b32"] > 0
        assert s["train_seconds"] >= 0
        # Sampled metrics were requested: present and labelled as such.
        assert 0.0 <= s["sampled_uniform_ndcg@10"] <= 1.0
        assert "sampled_uniform_hr@10" in s
    teacher = r["stages"][0]
    assert teacher["torch_us_b1"] > 0 and teacher["torch_us_b32"] > 0
    # The INT8 stage trains nothing: its time is run_compress's quantization phase.
    assert r["stages"][-1]["train_seconds"] == r["timings_s"]["quantize"] > 0
    for k in ("hr@10", "ndcg@10", "mrr@10"):
        assert 0.0 <= r["popularity"][k] <= 1.0
    refs = r["references"]
    assert refs["applies_to_this_data"] is False  # synthetic data: not comparable
    assert {m["name"]: m["ndcg@10"] for m in refs["models"]}["SASRec+ (published)"] == 0.0327


def test_recipe_records_the_config_that_ran(bench: dict[str, Any]) -> None:
    recipe = bench["json"]["recipe"]
    assert recipe["teacher_dim"] == 32 and recipe["teacher_epochs"] == 2
    assert recipe["finetune_epochs"] == 1 and recipe["sampled_metrics"] == "uniform"
    assert recipe["progress"] is False and recipe["lr"] == 5e-3
    # What the demo recipe sets and --set did not override is the recipe's.
    assert recipe["prune_ratio"] == 0.5
    assert bench["json"]["recipe"] == bench["report"]["recipe"]["config"]


def test_numbers_are_those_of_the_run(bench: dict[str, Any]) -> None:
    r, report = bench["json"], bench["report"]
    assert len(r["stages"]) == len(report["stages"])
    for s, raw in zip(r["stages"], report["stages"], strict=True):
        assert s["name"] == raw["stage"]
        assert s["params"] == raw["params"] and s["bytes"] == raw["size_bytes"]
        assert s["ndcg@10"] == raw["metrics"]["ndcg@10"]
        assert s["encoder_us_b32"] == raw["latency"]["latency_us_per_row_b32"]
    by = {s["name"]: s for s in r["stages"]}
    assert by["pruned"]["params"] < by["student"]["params"] < by["teacher"]["params"]
    assert by["pruned+int8"]["params"] == by["pruned"]["params"]
    bundle_dir = Path(report["bundle_dir"])
    # The served size is the archive that ships; the unpacked directory is reported beside it.
    assert by["pruned+int8"]["bytes"] == Path(report["archive"]).stat().st_size
    dir_bytes = sum(p.stat().st_size for p in bundle_dir.iterdir())
    assert r["served_bundle"]["dir_bytes"] == dir_bytes
    assert by["teacher"]["train_seconds"] == report["timings_s"]["teacher"]
    assert by["pruned"]["train_seconds"] == report["timings_s"]["prune_finetune"]


def test_targets_are_computed_from_the_stages(bench: dict[str, Any]) -> None:
    r = bench["json"]
    t = r["targets"]
    by = {s["name"]: s for s in r["stages"]}
    served, teacher, pruned = by["pruned+int8"], by["teacher"], by["pruned"]
    assert t["served_ndcg@10"]["value"] == served["ndcg@10"]
    assert t["served_hr@10"]["value"] == served["hr@10"]
    assert t["size_ratio"]["value"] == pytest.approx(teacher["params"] * 4 / served["bytes"])
    assert t["speed_ratio_b1"]["value"] == pytest.approx(
        teacher["torch_us_b1"] / served["encoder_us_b1"]
    )
    assert t["speed_ratio_b32"]["value"] == pytest.approx(
        teacher["torch_us_b32"] / served["encoder_us_b32"]
    )
    loss = (pruned["ndcg@10"] - served["ndcg@10"]) / pruned["ndcg@10"]
    assert t["quantization_ndcg_loss"]["value"] == pytest.approx(loss)
    for key, v in t.items():
        if key == "all_passed":
            continue
        expect = v["value"] >= v["threshold"] if v["op"] == ">=" else v["value"] <= v["threshold"]
        assert v["passed"] is expect, key
    assert t["all_passed"] is all(v["passed"] for k, v in t.items() if k != "all_passed")


def test_only_the_three_result_files_land_in_results(bench: dict[str, Any]) -> None:
    files = sorted(p.name for p in bench["results_dir"].iterdir())
    expected = ["compress-tiny-shop.json", "compress-tiny-shop.md"]
    if HAVE_MPL:
        expected.append("compress-tiny-shop.png")
    assert files == sorted(expected)
    assert (bench["root"] / "work" / "tiny-shop" / "bench-demo" / "model.onnx").is_file()


def test_markdown_has_the_tables(bench: dict[str, Any]) -> None:
    md = (bench["results_dir"] / "compress-tiny-shop.md").read_text()
    r = bench["json"]
    assert r["command"] in md
    if r["git_commit"]:
        assert r["git_commit"] in md
    for name in ("popularity (baseline)", "| teacher |", "| student |", "| pruned |"):
        assert name in md
    assert "**pruned+int8** (served)" in md
    assert "## Targets" in md and "quantization_ndcg_loss" in md
    assert "sampled_uniform_ndcg@10" in md
    assert "(published)" not in md  # synthetic data: the Beauty references do not apply


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed (pip install -e '.[bench]')")
def test_png_is_a_real_image(bench: dict[str, Any]) -> None:
    raw = (bench["results_dir"] / "compress-tiny-shop.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert width >= 800 and height >= 400
    assert len(raw) > 20_000


def test_published_references_appear_for_beauty(bench: dict[str, Any], tmp_path: Path) -> None:
    r = copy.deepcopy(bench["json"])
    r["references"]["applies_to_this_data"] = True
    md = render_markdown(r)
    assert "*SASRec+ (published)*" in md and "*0.0327*" in md and "*BERT4Rec (published)*" in md
    if HAVE_MPL:
        render_plot(r, tmp_path / "x.png")
        assert (tmp_path / "x.png").stat().st_size > 20_000


def _stage(name: str, params: int, nbytes: int, ndcg: float, **extra: Any) -> dict[str, Any]:
    s = {"name": name, "params": params, "bytes": nbytes, "ndcg@10": ndcg, "hr@10": 2 * ndcg}
    s.update({"encoder_us_b1": 100.0, "encoder_us_b32": 10.0})
    s.update(extra)
    return s


def test_targets_pass_and_fail_at_their_thresholds() -> None:
    teacher = _stage("teacher", 1_500, 6_000, 0.05, torch_us_b1=1_000.0, torch_us_b32=100.0)
    pruned = _stage("pruned", 100, 500, 0.04)
    served = _stage("pruned+int8", 100, 400, 0.04 * (1 - 0.9 * TARGET_QUANT_LOSS))
    t = evaluate_targets([teacher, pruned, served], "pruned+int8")
    assert t["size_ratio"]["value"] == 15.0 and t["size_ratio"]["passed"]
    assert t["speed_ratio_b1"]["value"] == 10.0 and t["speed_ratio_b1"]["passed"]
    assert t["quantization_ndcg_loss"]["passed"]
    assert t["served_hr@10"]["passed"] and t["served_ndcg@10"]["passed"]
    assert t["all_passed"]
    served["bytes"] = 401
    served["ndcg@10"] = 0.0339
    t = evaluate_targets([teacher, pruned, served], "pruned+int8")
    assert not t["size_ratio"]["passed"] and not t["served_ndcg@10"]["passed"]
    assert not t["quantization_ndcg_loss"]["passed"] and not t["all_passed"]
    # A missing measurement never passes.
    del teacher["torch_us_b1"]
    t = evaluate_targets([teacher, pruned, served], "pruned+int8")
    assert t["speed_ratio_b1"]["value"] is None and not t["speed_ratio_b1"]["passed"]


def test_set_overrides_are_typed_and_checked() -> None:
    got = parse_sets(["prune_ratio=0.3", "teacher-epochs=4", "progress=false", "ks=10,20",
                      "loss=sampled", "device=cuda"])  # fmt: skip
    assert got == {"prune_ratio": 0.3, "teacher_epochs": 4, "progress": False,
                   "ks": (10, 20), "loss": "sampled", "device": "cuda"}  # fmt: skip
    for bad in ("nope=1", "loss=bce", "progress=maybe", "teacher_epochs", "data=x.txt"):
        with pytest.raises(ValueError):
            parse_sets([bad])


def test_bad_arguments_exit_with_usage_errors(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("u1 i1\n")
    with pytest.raises(SystemExit) as e:
        main(["--data", str(data), "--set", "nope=1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path / "missing.txt")])
    assert e.value.code == 2


@pytest.mark.parametrize(("speedup", "on"), [(3.0, True), (1.1, False), (0.01, False)])
def test_bf16_auto_is_decided_by_the_measured_speedup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, speedup: float, on: bool
) -> None:
    import benchmarks.compress as bench

    monkeypatch.setattr(bench, "bf16_speedup", lambda *a, **k: speedup)
    assert RECIPES["beauty"]["bf16"] == "auto"
    config = build_config(data="x", work=tmp_path, recipe="beauty")
    assert config.bf16 is on
    # An explicit setting is kept as given, without measuring.
    monkeypatch.setattr(bench, "bf16_speedup", lambda *a, **k: pytest.fail("measured"))
    assert build_config(data="x", work=tmp_path, recipe="beauty", overrides={"bf16": on}).bf16 is on


def test_recipes_are_valid_configs() -> None:
    from models.compress import CompressConfig

    for values in RECIPES.values():
        CompressConfig(data="x", **values)  # an unknown key would raise TypeError
    assert {"beauty", "demo"} <= set(RECIPES)


def test_a_rerun_replaces_the_previous_work(tmp_path: Path) -> None:
    (tmp_path / "bench-demo").mkdir()
    (tmp_path / "bench-demo" / "model.onnx").write_bytes(b"x")
    for suffix in (".tar.gz", "-report.json", "-report.md"):
        (tmp_path / f"bench-demo{suffix}").write_text("x")
    (tmp_path / "other.txt").write_text("kept")
    _clear_previous(tmp_path, "bench-demo")
    assert [p.name for p in tmp_path.iterdir()] == ["other.txt"]
