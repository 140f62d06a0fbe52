"""Every stage of a compression run measured the same way: size, work, speed, accuracy.

One record per stage and seed (`StageRecord` as a dict), with

    model_bytes        unpacked bytes of the files the stage needs to answer, per file in
                       `model_files`: an fp32 stage's ONNX file (encoder graph with the tied
                       fp32 item table inside, which scoring reads too); the served bundle's
                       model.onnx + items.npy + item_scales.npy (int8 rows) or codebooks.npy
                       (pq4). `bits_per_item`: the item table's array bytes (.npy headers
                       left out) x 8 per row: 8 dim + 32 for int8 rows with their scales,
                       4 dim + 32 for int4 rows, 4 M + the codebooks' share for pq4.
                       Vocabulary, popularity and manifest are listed apart
                       (`metadata_files`), the archive as `archive_bytes`.
    encoder_us_b1/b32  onnxruntime, one intra-op thread, every stage on the same 32 test
                       histories padded to max_len; the served stage through the service's
                       own encoder session.
    e2e_us_b1/b32      a whole answer: encode, score the full catalog, top 10, one thread,
                       with the service's catalog scorer (`service.scorer.Scorer`): fp32
                       items in fp32 for the fp32 stages, the served bundle exactly as the
                       service loads it.
    encoder_params     parameters without the item table; encoder_flops: one request at
                       max_len (`models.sasrec.encoder_flops`).
    ranks              0-based rank of each test user's target: full ranking for the fp32
                       stages (`models.evaluate`), the position in the service's top-k answer
                       for the served stage (`stats.MISS` when absent).

`torch_us_*` (the PyTorch forward, every position) are context, never in a target.

Per-seed times are context too: a stage timed minutes after another ran under other load.
The figures of the report come from `time_together`: at the end of the run every stage is
timed in turn, over several rounds (teacher, student, ..., served, then again), and each
stage keeps the median of its rounds, so every ratio compares times taken side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import bundle
from benchmarks.service_eval import (
    default_settings,
    measure_e2e,
    ranks_from_answers,
    service_answers,
)
from benchmarks.service_eval import service_options as service_model_options
from benchmarks.stats import bootstrap_ci, gains
from models.evaluate import item_array, measure_latency, metrics_from_ranks, onnx_encoder
from models.sasrec import SASRec, encoder_flops, encoder_params
from models.split import EvalSet
from service.loading import load_model
from service.model import LoadedModel
from service.scorer import CatalogScorer, Scorer

I64 = npt.NDArray[np.int64]
# What a served bundle needs to answer; the rest of its files are metadata.
SERVED_FILES = (bundle.MODEL_FILE, bundle.ITEMS_FILE, bundle.SCALES_FILE, bundle.CODEBOOKS_FILE)
ITEM_FILES = (bundle.ITEMS_FILE, bundle.SCALES_FILE, bundle.CODEBOOKS_FILE)
E2E_K = 10  # a whole answer is the top 10
# Issue 19's batch-independence check: this many test users, alone and in batches of this size.
BATCH_CHECK_USERS = 1000
BATCH_CHECK_SIZE = 32
TIMING_ROUNDS = 7
TIMED = ("encoder_us_b1", "encoder_us_b32", "e2e_us_b1", "e2e_us_b32")


@dataclass
class StageTimer:
    """What a stage runs to answer: its encoder and its catalog scorer."""

    encode: Callable[[I64], npt.NDArray[np.float32]]
    scorer: CatalogScorer


def fp32_timer(model: SASRec, onnx_model: bytes) -> StageTimer:
    """An fp32 stage as it would be served: fp32 ONNX encoder, fp32 item table."""
    scorer = Scorer(item_array(model), None, precision="fp32", threads=1)
    return StageTimer(onnx_encoder(onnx_model, threads=1), scorer)


def served_timer(bundle_dir: Path) -> StageTimer:
    """The served bundle exactly as the service loads it."""
    loaded = load_model(bundle_dir, service_model_options())
    return StageTimer(loaded.encode, loaded.scorer)


def _times(timer: StageTimer, timing: TimingInputs) -> dict[str, float]:
    encoder = measure_latency(timer.encode, timing.inputs, budget_s=timing.budget_s)
    e2e = measure_e2e(
        timer.encode,
        timer.scorer,
        timing.inputs,
        timing.banned,
        k=E2E_K,
        budget_s=timing.budget_s,
    )
    return {
        "encoder_us_b1": encoder["latency_us_b1"],
        "encoder_us_b32": encoder["latency_us_per_row_b32"],
        **e2e,
    }


def time_together(
    timers: dict[str, StageTimer], timing: TimingInputs, *, rounds: int = TIMING_ROUNDS
) -> dict[str, dict[str, Any]]:
    """Every stage's `TIMED` figures, the stages timed in turn `rounds` times over; each
    figure is the median of its rounds (and `<figure>_rounds` keeps them all). The process is
    pinned to one core meanwhile (the last it may use), then unpinned."""
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in timers}
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        for _ in range(rounds):
            for name, timer in timers.items():
                seen[name].append(_times(timer, timing))
    finally:
        os.sched_setaffinity(0, allowed)
    out: dict[str, dict[str, Any]] = {}
    for name, rows in seen.items():
        out[name] = {key: float(np.median([r[key] for r in rows])) for key in TIMED}
        out[name].update({f"{key}_rounds": [r[key] for r in rows] for key in TIMED})
    return out


@dataclass
class TimingInputs:
    """The same requests for every stage: test histories padded to max_len, their bans."""

    inputs: I64  # (32, max_len)
    banned: list[list[int]]  # each row's history (catalog rows it must not get)
    budget_s: float


def timing_inputs(test: EvalSet, max_len: int, budget_s: float) -> TimingInputs:
    n = min(32, len(test))
    banned = [[int(i) for i in h] for h in test.histories[:n]]
    return TimingInputs(test.inputs(max_len=max_len)[:n], banned, budget_s)


def _accuracy(ranks: I64, ks: Sequence[int], seed: int) -> dict[str, Any]:
    """HR/NDCG/MRR@k from ranks (MISS = not in the answer) and NDCG@10's bootstrap interval."""
    finite = np.where(ranks < 0, np.iinfo(np.int64).max // 2, ranks)
    metrics = metrics_from_ranks(finite, ks)
    lo, hi = bootstrap_ci(gains(ranks, 10, "ndcg"), seed=seed)
    return {
        "hr@10": metrics["hr@10"],
        "ndcg@10": metrics["ndcg@10"],
        "mrr@10": metrics["mrr@10"],
        "ndcg@10_ci95": [lo, hi],
        "metrics_all": metrics,
    }


def fp32_stage(
    name: str,
    model: SASRec,
    onnx_model: bytes,
    ranks: I64,
    timing: TimingInputs,
    *,
    seed: int,
    ks: Sequence[int],
    torch_latency: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A PyTorch-trained stage served the fp32 way: its fp32 ONNX encoder, fp32 item table."""
    encode = onnx_encoder(onnx_model, threads=1)
    encoder = measure_latency(encode, timing.inputs, budget_s=timing.budget_s)
    scorer = Scorer(item_array(model), None, precision="fp32", threads=1)
    record: dict[str, Any] = {
        "name": name,
        "seed": seed,
        **_shape(model),
        "model_bytes": len(onnx_model),
        "model_files": {"model.onnx (fp32, item table inside)": len(onnx_model)},
        "bits_per_item": 32 * model.config.dim,
        "encoder_us_b1": encoder["latency_us_b1"],
        "encoder_us_b32": encoder["latency_us_per_row_b32"],
        **measure_e2e(
            encode, scorer, timing.inputs, timing.banned, k=E2E_K, budget_s=timing.budget_s
        ),
        **_accuracy(ranks, ks, seed),
        "evaluated_with": "pipeline: fp32 ONNX encoder x fp32 item table, full ranking",
    }
    if torch_latency:
        record["torch_us_b1"] = torch_latency.get("torch_latency_us_b1")
        record["torch_us_b32"] = torch_latency.get("torch_latency_us_per_row_b32")
    return record


def served_stage(
    name: str,
    bundle_dir: Path,
    archive: Path,
    model: SASRec,
    test: EvalSet,
    vocab: Sequence[str],
    timing: TimingInputs,
    *,
    seed: int,
    ks: Sequence[int],
) -> tuple[dict[str, Any], I64]:
    """The bundle as the service serves it: loaded by the service's loader with its default
    settings, answered by its request path at its batch size. Returns the record and ranks."""
    loaded = load_model(bundle_dir, service_model_options())
    encoder = measure_latency(loaded.encode, timing.inputs, budget_s=timing.budget_s)
    # A shopper's request carries at most MAX_HISTORY items (the service refuses more): the
    # most recent ones, so older views of a long history are not banned.
    limit = default_settings().max_history
    histories = [[vocab[i] for i in h[-limit:]] for h in test.histories]
    targets = [vocab[int(t)] for t in test.targets]
    answers = service_answers(loaded, histories, k=max(ks))
    ranks = ranks_from_answers(answers, targets)
    files = {p.name: p.stat().st_size for p in sorted(bundle_dir.iterdir()) if p.is_file()}
    needed = {f: files[f] for f in SERVED_FILES if f in files}
    record: dict[str, Any] = {
        "name": name,
        "seed": seed,
        **_shape(model),
        "model_bytes": sum(needed.values()),
        "model_files": needed,
        # the item table's arrays (codebooks and scales included) per catalog row
        "bits_per_item": 8 * table_bytes(bundle_dir) / len(vocab),
        "metadata_files": {f: b for f, b in files.items() if f not in needed},
        "archive_bytes": archive.stat().st_size,
        "encoder_us_b1": encoder["latency_us_b1"],
        "encoder_us_b32": encoder["latency_us_per_row_b32"],
        **measure_e2e(
            loaded.encode,
            loaded.scorer,
            timing.inputs,
            timing.banned,
            k=E2E_K,
            budget_s=timing.budget_s,
        ),
        **_accuracy(ranks, ks, seed),
        "evaluated_with": "service",
        "service_k": max(ks),
        "batch_independence": batch_independence(loaded, histories[:BATCH_CHECK_USERS]),
    }
    return record, ranks


def batch_independence(loaded: LoadedModel, histories: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many of `histories` get the same top 10 answered alone as in batches of 32 (the
    service's micro-batch): a shopper's answer must not depend on who shared the batch."""
    alone = service_answers(loaded, histories, k=E2E_K, batch_size=1)
    batched = service_answers(loaded, histories, k=E2E_K, batch_size=BATCH_CHECK_SIZE)
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    return {"users": len(histories), "batch_size": BATCH_CHECK_SIZE, "identical_top10": same}


def table_bytes(bundle_dir: Path) -> int:
    """Bytes of the item table's arrays in `bundle_dir` (items, scales, codebooks), without
    the .npy headers: what the encoding itself costs."""
    files = [bundle_dir / f for f in ITEM_FILES if (bundle_dir / f).is_file()]
    return sum(int(np.load(f, mmap_mode="r", allow_pickle=False).nbytes) for f in files)


def _shape(model: SASRec) -> dict[str, int]:
    cfg = model.config
    return {
        "params": model.num_params(),
        "encoder_params": encoder_params(model),
        "item_table_params": model.num_params() - encoder_params(model),
        "encoder_flops": encoder_flops(cfg, cfg.max_len),
    }
