from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bundle
from benchmarks.service_eval import service_options
from models.cli import main
from models.compress import (
    CompressConfig,
    CompressResult,
    TrainedTeacher,
    checkpoint_dir,
    load_checkpoint,
    load_teacher,
    prepare_data,
    run_compress,
    save_teacher,
)
from models.evaluate import evaluate, metrics_from_ranks, onnx_encoder
from models.split import leave_one_out
from models.train import FitResult
from service.loading import load_model
from service.model import RecRequest
from tests.models.conftest import TINY_COMPRESS, Dataset

# The fixed-seed run served NDCG@10 0.642; floor = that - 15% for BLAS/thread nondeterminism.
SERVED_NDCG_FLOOR = 0.642 * 0.85


@pytest.fixture(scope="module")
def compressed(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> CompressResult:
    out = tmp_path_factory.mktemp("bundles")
    return run_compress(
        CompressConfig(data=str(synthetic.path), out=str(out), version="tiny-1", **TINY_COMPRESS)
    )


def test_bundle_is_accepted_by_the_reader_and_reproduces_golden_outputs(
    compressed: CompressResult,
) -> None:
    b = bundle.read_bundle(compressed.bundle_dir)
    assert b.version == "tiny-1"
    assert b.items.dtype == np.int8 and b.item_scales is not None
    assert b.vocab[0] == "" and len(b.vocab) == b.manifest.n_items + 1
    assert len(b.manifest.golden) == 3
    session = onnx_encoder(str(b.model_path), threads=1)
    assert bundle.verify_golden(b, session) <= b.manifest.golden_atol
    # Served the way the service may serve it: row by row, padding trimmed.
    inputs = np.array([g.input for g in b.manifest.golden], dtype=np.int64)
    expected = np.array([g.output for g in b.manifest.golden], dtype=np.float32)
    for row in range(len(inputs)):
        x = inputs[row : row + 1]
        x = x[:, x.shape[1] - int((x > 0).sum()) :]
        assert np.abs(session(x)[0] - expected[row]).max() <= b.manifest.golden_atol


def test_each_stage_s_weights_are_kept_for_benchmarks(compressed: CompressResult) -> None:
    saved = checkpoint_dir(compressed.bundle_dir.parent, "tiny-1")
    b = bundle.read_bundle(compressed.bundle_dir)
    pruned = load_checkpoint(saved / "pruned.pt")
    assert pruned.num_params() == b.manifest.architecture["params"]
    teacher = load_checkpoint(saved / "teacher.pt")
    assert teacher.config.dim == b.manifest.architecture["teacher"]["dim"]
    # The pruned weights encode exactly what the shipped (int8) encoder approximates.
    x = np.array([b.manifest.golden[0].input], dtype=np.int64)
    with torch.inference_mode():
        user = pruned(torch.from_numpy(x)).numpy()[0]
    golden = np.array(b.manifest.golden[0].output)
    cos = float(user @ golden / np.linalg.norm(user) / np.linalg.norm(golden))
    assert cos > 0.99


def test_archive_unpacks_to_the_same_bundle(compressed: CompressResult, tmp_path: Path) -> None:
    with compressed.archive.open("rb") as f:
        bundle.extract_archive(io.BytesIO(f.read()), tmp_path / "x")
    assert (
        bundle.read_bundle(tmp_path / "x").manifest
        == bundle.read_bundle(compressed.bundle_dir).manifest
    )


def test_manifest_metrics_are_those_of_the_served_artifact(
    compressed: CompressResult, synthetic: Dataset
) -> None:
    b = bundle.read_bundle(compressed.bundle_dir)
    items = bundle.decode_items(b.items, b.item_scales)
    split = leave_one_out(synthetic.data.sequences)
    m = evaluate(onnx_encoder(str(b.model_path)), items, split.test, max_len=b.manifest.max_len)
    assert b.manifest.metrics["test_ndcg@10"] == pytest.approx(m["ndcg@10"], abs=1e-3)
    assert b.manifest.metrics["test_ndcg@10"] > 2 * b.manifest.metrics["popularity_test_ndcg@10"]
    assert b.manifest.metrics["test_ndcg@10"] >= SERVED_NDCG_FLOOR  # not only vs popularity
    assert b.manifest.dataset["users"] == synthetic.data.n_users
    assert b.manifest.recipe["pruning"]["ratio"] == 0.5
    assert b.manifest.architecture["config"]["n_heads"] == [2, 2]


def test_report_lists_every_stage(compressed: CompressResult) -> None:
    report = json.loads(compressed.report_path.read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["teacher", "student", "pruned", "pruned+int8"]
    assert stages["teacher"]["params"] > stages["student"]["params"] > stages["pruned"]["params"]
    assert stages["pruned+int8"]["size_bytes"] < stages["teacher"]["size_bytes"]
    assert all(s["latency"]["latency_us_b1"] > 0 for s in stages.values())
    assert report["acceptance"]["passed"]
    assert max(report["recipe"]["onnx_parity_max_abs_diff"].values()) < 1e-4
    for stage in ("teacher", "pruned+int8"):
        assert stage in compressed.table
    assert (compressed.bundle_dir.parent / "tiny-1-report.md").is_file()


def test_ranks_are_kept_per_user_and_give_the_reported_metrics(
    compressed: CompressResult, synthetic: Dataset
) -> None:
    n_users = len(leave_one_out(synthetic.data.sequences).test)
    for stage in compressed.report["stages"]:
        ranks = compressed.ranks[stage["stage"]]
        assert ranks.shape == (n_users,) and (ranks >= 0).all()
        got = metrics_from_ranks(ranks, (10,))
        assert got["ndcg@10"] == pytest.approx(stage["metrics"]["ndcg@10"])
    assert set(compressed.models) == {"teacher", "student", "pruned"}
    assert set(compressed.fp32_onnx) == set(compressed.models)


def test_a_saved_teacher_is_reused_only_with_the_settings_it_was_trained_with(
    compressed: CompressResult, synthetic: Dataset, tmp_path: Path
) -> None:
    config = CompressConfig(data=str(synthetic.path), out=str(tmp_path), **TINY_COMPRESS)
    model = load_checkpoint(checkpoint_dir(compressed.bundle_dir.parent, "tiny-1") / "teacher.pt")
    trained = TrainedTeacher(model, FitResult(best_epoch=2, best_ndcg=0.3, epochs_run=3), 12.5)
    path = tmp_path / "teacher.pt"
    save_teacher(path, config, trained, data_sha256="abc")
    n_items = synthetic.n_items
    again = load_teacher(path, config, n_items=n_items, data_sha256="abc")
    assert again.seconds == 12.5 and again.fit.best_epoch == 2
    for name, param in model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], param)
    with pytest.raises(ValueError, match="data_sha256"):
        load_teacher(path, config, n_items=n_items, data_sha256="other")
    longer = dataclasses.replace(config, teacher_epochs=9)
    with pytest.raises(ValueError, match="train_config"):
        load_teacher(path, longer, n_items=n_items, data_sha256="abc")
    wider = dataclasses.replace(config, teacher_dim=64)
    with pytest.raises(ValueError, match="teacher_config"):
        load_teacher(path, wider, n_items=n_items, data_sha256="abc")


def test_a_recipe_without_pruning_serves_the_quantized_student(
    compressed: CompressResult, synthetic: Dataset, tmp_path: Path
) -> None:
    config = CompressConfig(
        data=str(synthetic.path), out=str(tmp_path), version="no-prune",
        **{**TINY_COMPRESS, "prune_ratio": 0.0},
    )  # fmt: skip
    model = load_checkpoint(checkpoint_dir(compressed.bundle_dir.parent, "tiny-1") / "teacher.pt")
    teacher = TrainedTeacher(model, FitResult(best_epoch=1, best_ndcg=0.3, epochs_run=1), 1.0)
    result = run_compress(config, prep=prepare_data(config), trained_teacher=teacher)
    stages = [s["stage"] for s in result.report["stages"]]
    assert stages == ["teacher", "student", "student+int8"]
    assert result.report["served_stage"] == "student+int8"
    assert result.report["recipe"]["pruning"] == {"ran": False, "ratio": 0.0}
    assert "prune_finetune" not in result.report["timings_s"]
    b = bundle.read_bundle(result.bundle_dir)
    assert b.manifest.architecture["params"] == result.models["student"].num_params()


def test_existing_version_is_refused(compressed: CompressResult, synthetic: Dataset) -> None:
    config = CompressConfig(
        data=str(synthetic.path),
        out=str(compressed.bundle_dir.parent),
        version="tiny-1",
        **TINY_COMPRESS,
    )
    with pytest.raises(FileExistsError):
        run_compress(config)


def tiny_cli_flags() -> list[str]:
    """TINY_COMPRESS as `python -m models compress` flags."""
    flags = []
    for key, value in TINY_COMPRESS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def test_cli_synth_then_compress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "s.txt"
    assert main(["synth", "--out", str(data), "--users", "150", "--items", "100"]) == 0
    argv = ["compress", "--data", str(data), "--out", str(tmp_path / "b"), "--version", "cli"]
    argv += [*tiny_cli_flags(), "--teacher-epochs", "1", "--student-epochs", "1", "--ks", "5", "10"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pruned+int8" in out and "acceptance:" in out
    b = bundle.read_bundle(tmp_path / "b" / "cli")
    assert b.manifest.recipe["config"]["ks"] == [5, 10]
    assert "test_hr@5" in b.manifest.metrics


def test_cli_reports_bad_data_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.txt"
    data.write_text("1 10\n1 11\nthis line is wrong\n")
    argv = ["compress", "--data", str(data), "--out", str(tmp_path / "b"), "--format", "txt"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.txt:3" in err
    assert not (tmp_path / "b").exists()


def test_the_shipped_bundle_answers_a_shopper_the_same_whatever_the_batch(
    compressed: CompressResult, synthetic: Dataset
) -> None:
    """Static INT8: a history answered alone and in micro-batches of 32 (the service's size),
    through the service's own loader and request path, gets the same top 10."""
    loaded = load_model(compressed.bundle_dir, service_options())
    vocab = bundle.read_bundle(compressed.bundle_dir).vocab
    requests = [
        RecRequest(history=[vocab[i] for i in h], k=10) for h in synthetic.split.test.histories
    ]
    assert len(requests) >= 100
    alone = [loaded.recommend(r) for r in requests]
    together = [
        answer
        for start in range(0, len(requests), 32)
        for answer in loaded.recommend_batch(requests[start : start + 32])
    ]
    for a, b in zip(alone, together, strict=True):
        assert a.item_ids == b.item_ids
        assert a.scores == b.scores
    assert compressed.report["recipe"]["quantization"]["activations"] == "static"


def test_a_pq4_run_ships_codes_the_service_answers_from(
    synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """item_encoding pq4: the item table is product-quantized, fine-tuned, and shipped as
    packed codes and codebooks that the encoder and the service's scorer both read."""
    out = tmp_path_factory.mktemp("pq")
    config = CompressConfig(
        data=str(synthetic.path), out=str(out), version="tiny-pq", item_encoding="pq4",
        pq_subspaces=8, pq_finetune_epochs=1, **TINY_COMPRESS,
    )  # fmt: skip
    result = run_compress(config)
    report = result.report
    assert report["served_stage"] == "pruned+pq4m8+int8"
    assert report["recipe"]["item_table"]["bytes_per_item"] == 4
    assert "finetune_val_ndcg10" in report["recipe"]["item_table"]
    b = bundle.read_bundle(result.bundle_dir)
    assert b.manifest.item_encoding == "pq4" and b.pq is not None
    assert b.items.shape == (synthetic.n_items + 1, 4) and b.pq.codebooks.shape == (8, 16, 2)
    loaded = load_model(result.bundle_dir, service_options())
    vocab = b.vocab
    histories = synthetic.split.test.histories
    answers = [loaded.recommend(RecRequest(history=[vocab[i] for i in h], k=10)) for h in histories]
    # the service's full-catalog answer is the exact top 10 of its user vector over the
    # decoded table, history removed
    users = loaded.encode(synthetic.split.test.inputs(max_len=config.max_len))
    scores = users @ b.pq.decode().T
    scores[:, 0] = -np.inf
    for row, h in enumerate(histories):
        scores[row, h] = -np.inf
    best = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    same = [a.item_ids == [vocab[i] for i in want] for a, want in zip(answers, best, strict=True)]
    assert np.mean(same) > 0.99  # float summation order may swap exact near-ties
    # and its NDCG@10 is the pipeline's figure for the served stage
    served = next(s for s in report["stages"] if s["stage"] == "pruned+pq4m8+int8")
    targets = [vocab[int(t)] for t in synthetic.split.test.targets]
    hits = [
        a.item_ids.index(t) if t in a.item_ids else -1
        for a, t in zip(answers, targets, strict=True)
    ]
    ndcg = np.mean([1 / np.log2(r + 2) if r >= 0 else 0.0 for r in hits])
    assert ndcg == pytest.approx(served["metrics"]["ndcg@10"], abs=2e-3)


def test_cli_compress_with_int4_rows_ships_a_bundle_the_service_answers_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "s.txt"
    assert main(["synth", "--out", str(data), "--users", "150", "--items", "100"]) == 0
    argv = ["compress", "--data", str(data), "--out", str(tmp_path / "b"), "--version", "q4"]
    argv += [
        *tiny_cli_flags(),
        "--teacher-epochs",
        "1",
        "--student-epochs",
        "1",
        "--item-encoding",
        "int4",
    ]
    assert main(argv) == 0
    assert "acceptance:" in capsys.readouterr().out
    b = bundle.read_bundle(tmp_path / "b" / "q4")
    dim = b.manifest.dim
    assert b.manifest.item_encoding == "int4" and b.items.dtype == np.uint8
    assert b.items.shape == (b.manifest.n_items + 1, dim // 2)
    assert b.manifest.recipe["item_table"]["bytes_per_item"] == dim // 2 + 4
    loaded = load_model(tmp_path / "b" / "q4", service_options())
    answer = loaded.recommend(RecRequest(history=[b.vocab[3], b.vocab[7]], k=5))
    assert answer.strategy == "model" and answer.model_version == "q4"
    assert len(answer.item_ids) == 5 and not {b.vocab[3], b.vocab[7]} & set(answer.item_ids)
