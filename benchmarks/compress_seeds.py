"""The compression benchmark's student side, one seed at a time (`benchmarks.compress`):
distil, prune, quantize and bundle with `models.compress.run_compress`, the cross-entropy
baseline, and the same model with other item tables, every stage measured alike.

    s = run_seeds(config, prep, teacher, n=3, pq_variants=(8, 16, 32))
    s.runs, s.ranks, s.timers      # records per seed, per-user ranks, what `time_together` times
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.compress_measure import (
    StageTimer,
    TimingInputs,
    fp32_stage,
    fp32_timer,
    served_stage,
    served_timer,
    timing_inputs,
)
from benchmarks.compress_report import Ranks
from benchmarks.harness.log import logger
from bundle.manifest import ItemEncoding
from models.compress import (
    CompressConfig,
    CompressResult,
    PreparedData,
    TrainedTeacher,
    cache_teacher,
    fit_ce_baseline,
    fit_teacher,
    load_teacher,
    make_variant,
    run_compress,
    save_teacher,
)
from models.distill import TeacherTopK
from models.evaluate import (
    evaluate_ranks,
    item_array,
    measure_latency,
    onnx_encoder,
    torch_encoder,
    torch_threads,
)
from models.export import export_onnx

log = logger("bench")


@dataclasses.dataclass
class Seeds:
    """Every seed's stages: records per seed, ranks by stage and seed, the pipeline's report
    per seed, and what each stage runs to answer (the last seed's, and the first seed's
    variants) for `time_together`."""

    seeds: list[int]
    runs: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)
    reports: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ranks: Ranks = dataclasses.field(default_factory=dict)
    timers: dict[str, StageTimer] = dataclasses.field(default_factory=dict)


# --- one seed ------------------------------------------------------------------------------------
def run_seed(
    config: CompressConfig,
    prep: PreparedData,
    teacher: TrainedTeacher,
    cached: TeacherTopK | None,
    *,
    with_teacher: bool,
    int4_variant: bool = False,
    pq_variants: Sequence[int] = (),
) -> SeedRun:
    """The student side for one seed (distil, prune, quantize) and the cross-entropy baseline,
    every stage measured: (records, ranks by stage, run_compress's report, and what each stage
    runs to answer, teacher included, for `time_together`). Variants of the same fp32 model
    with other item tables: `<model>+int8` (int8 rows) when the recipe ships another encoding,
    `<model>+int4` (int4 rows) with `int4_variant`, and for each M of
    `pq_variants` `<model>+pq4m<M>` (fp32, the decoded table) and `<model>+pq4m<M>+int8`."""
    result = run_compress(config, prep=prep, trained_teacher=teacher, cached=cached)
    report = result.report
    timing = timing_inputs(prep.split.test, config.max_len, config.latency_budget_s)
    run = SeedRun([], {}, report, {})
    latency = {s["stage"]: s.get("latency", {}) for s in report["stages"]}
    fits = _fits(report)
    for name, model in result.models.items():
        run.timers[name] = fp32_timer(model, result.fp32_onnx[name])
        if name == "teacher" and not with_teacher:
            continue
        rec = fp32_stage(
            name,
            model,
            result.fp32_onnx[name],
            result.ranks[name],
            timing,
            seed=config.seed,
            ks=tuple(config.ks),
            torch_latency=latency.get(name),
        )
        run.records.append({**rec, **fits.get(name, {})})
        run.ranks[name] = result.ranks[name]
    _served(run, config, prep, result, timing)
    baseline = _ce_baseline(config, prep, timing, tuple(config.ks))
    run.ranks["ce_baseline"] = baseline.pop("ranks")
    run.timers["ce_baseline"] = baseline.pop("timer")
    run.records.append(baseline)
    for encoding, subspaces in _item_table_variants(config, int4_variant, pq_variants):
        _variant(run, config, prep, result, teacher, cached, encoding, subspaces, timing)
    return run


@dataclasses.dataclass
class SeedRun:
    """One seed's stages: their records, per-user ranks, the pipeline's report, and what each
    stage runs to answer (for `time_together`)."""

    records: list[dict[str, Any]]
    ranks: dict[str, npt.NDArray[np.int64]]
    report: dict[str, Any]
    timers: dict[str, StageTimer]


def _served(
    run: SeedRun,
    config: CompressConfig,
    prep: PreparedData,
    result: CompressResult,
    timing: TimingInputs,
) -> None:
    """The shipped bundle, measured through the service."""
    served = str(run.report["served_stage"])
    fp32 = result.models[served.removesuffix("+int8")]
    rec, run.ranks[served] = served_stage(
        served,
        result.bundle_dir,
        result.archive,
        fp32,
        prep.split.test,
        prep.data.vocab,
        timing,
        seed=config.seed,
        ks=tuple(config.ks),
    )
    # The pipeline's own figure for the bundle (fp32 user vectors x dequantized items, batches
    # of 256): what the service's 7-bit users and micro-batches change is the difference.
    rec["pipeline_ndcg@10"] = run.report["stages"][-1]["metrics"]["ndcg@10"]
    run.records.append({**rec, "train_seconds": run.report["timings_s"].get("quantize")})
    run.timers[served] = served_timer(result.bundle_dir)


def _item_table_variants(
    config: CompressConfig, int4: bool, pq_variants: Sequence[int]
) -> list[tuple[ItemEncoding, int]]:
    """(encoding, subspaces) of every item table shipped beside the recipe's own."""
    variants: list[tuple[ItemEncoding, int]] = [("int4", 0)] if int4 else []
    if config.item_encoding != "int8":  # int8 rows, what every other encoding is compared with
        variants.insert(0, ("int8", 0))
    shipped = (config.item_encoding, config.pq_subspaces)
    return variants + [("pq4", m) for m in pq_variants if ("pq4", m) != shipped]


def _variant(
    run: SeedRun,
    config: CompressConfig,
    prep: PreparedData,
    result: CompressResult,
    teacher: TrainedTeacher,
    cached: TeacherTopK | None,
    encoding: ItemEncoding,
    subspaces: int,
    timing: TimingInputs,
) -> None:
    """The same model with another item table, bundled and measured through the service; a
    pq4 table's decoded fp32 model is a stage of its own."""
    v = make_variant(
        config, result, prep, teacher.model, cached, encoding=encoding, subspaces=subspaces
    )
    test, ks = prep.split.test, tuple(config.ks)
    if v.fp32_name not in result.models:
        _, run.ranks[v.fp32_name] = evaluate_ranks(
            onnx_encoder(v.fp32_onnx), item_array(v.fp32_model), test, max_len=config.max_len, ks=ks
        )
        rec = fp32_stage(
            v.fp32_name,
            v.fp32_model,
            v.fp32_onnx,
            run.ranks[v.fp32_name],
            timing,
            seed=config.seed,
            ks=ks,
        )
        run.records.append({**rec, "item_table": v.item_table})
        run.timers[v.fp32_name] = fp32_timer(v.fp32_model, v.fp32_onnx)
    rec, run.ranks[v.served_name] = served_stage(
        v.served_name,
        v.bundle_dir,
        v.archive,
        v.fp32_model,
        test,
        prep.data.vocab,
        timing,
        seed=config.seed,
        ks=ks,
    )
    run.records.append({**rec, "item_table": v.item_table})
    run.timers[v.served_name] = served_timer(v.bundle_dir)


def _fits(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Training time and validation NDCG@10 of each trained stage (from its pipeline report)."""
    t, recipe = report["timings_s"], report["recipe"]
    out = {
        "teacher": {
            "train_seconds": t.get("teacher"),
            "val_ndcg@10": recipe["teacher"]["val_ndcg@10"],
        },
        "student": {
            "train_seconds": t.get("student"),
            "val_ndcg@10": recipe["distillation"]["val_ndcg@10"],
        },
    }
    if recipe["pruning"].get("ran"):
        out["pruned"] = {
            "train_seconds": t.get("prune_finetune"),
            "val_ndcg@10": recipe["pruning"]["finetune_val_ndcg@10"],
        }
    return out


def _ce_baseline(
    config: CompressConfig, prep: PreparedData, timing: TimingInputs, ks: tuple[int, ...]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, fit = fit_ce_baseline(config, prep)
    seconds = time.perf_counter() - t0
    model.cpu().eval()
    onnx_model = export_onnx(model)
    _, ranks = evaluate_ranks(
        onnx_encoder(onnx_model), item_array(model), prep.split.test, max_len=config.max_len, ks=ks
    )
    with torch_threads(1):
        torch_lat = measure_latency(torch_encoder(model), timing.inputs, budget_s=timing.budget_s)
    rec = fp32_stage(
        "ce_baseline",
        model,
        onnx_model,
        ranks,
        timing,
        seed=config.seed,
        ks=ks,
        torch_latency={f"torch_{k}": v for k, v in torch_lat.items()},
    )
    return {
        **rec,
        "train_seconds": round(seconds, 2),
        "val_ndcg@10": fit.best_ndcg,
        "best_epoch": fit.best_epoch,
        "ranks": ranks,
        "timer": fp32_timer(model, onnx_model),
    }


# --- the teacher ---------------------------------------------------------------------------------
def teacher_for(
    config: CompressConfig, prep: PreparedData, work: Path, data_sha256: str, reuse: Path | None
) -> tuple[TrainedTeacher, dict[str, Any] | None]:
    """The one teacher every seed distils from: loaded from `reuse` (checked to be what this
    run would train) or trained now and saved under `work` for a later run's --teacher."""
    if reuse is not None:
        teacher = load_teacher(reuse, config, n_items=prep.data.n_items, data_sha256=data_sha256)
        log(f"teacher loaded from {reuse} (trained in {teacher.seconds:.0f} s)")
        return teacher, {"path": str(reuse), "train_seconds": teacher.seconds}
    teacher = fit_teacher(config, prep)
    save_teacher(work / f"teacher-seed{config.seed}.pt", config, teacher, data_sha256=data_sha256)
    return teacher, None


def run_seeds(
    config: CompressConfig,
    prep: PreparedData,
    teacher: TrainedTeacher,
    *,
    n: int,
    pq_variants: Sequence[int],
) -> Seeds:
    """The student side for `n` seeds from one teacher; the other item encodings of the same
    model only on the first seed (they cost minutes each)."""
    cached = cache_teacher(config, teacher.model, prep)
    s = Seeds([config.seed + i for i in range(n)])
    for i, seed in enumerate(s.seeds):
        log(f"student side, seed {seed} ({i + 1} of {n})")
        seed_config = dataclasses.replace(config, seed=seed, version=f"{config.version}-s{seed}")
        first = i == 0
        run = run_seed(
            seed_config,
            prep,
            teacher,
            cached,
            with_teacher=first,
            int4_variant=first,
            pq_variants=pq_variants if first else (),
        )
        s.timers.update(run.timers)  # the last seed's stages, and the first seed's variants
        s.runs.append(run.records)
        s.reports.append(run.report)
        for stage, r in run.ranks.items():
            s.ranks.setdefault(stage, {})[seed] = r
    return s
