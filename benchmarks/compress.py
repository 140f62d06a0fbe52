"""Compression benchmark: the whole pipeline on a real data set, every stage measured alike.

    make bench-compress DATA=../shared/data/amazon-beauty.txt
    python -m benchmarks.compress --data ../shared/data/amazon-beauty.txt \\
        [--seeds 3] [--teacher benchmarks/work/amazon-beauty/teacher-seed0.pt] \\
        [--out benchmarks/results] [--recipe beauty|demo] \\
        [--device cpu|cuda] [--set teacher_epochs=10 --set prune_ratio=0.3 ...]

Trains one teacher (or loads one an earlier run saved, `--teacher`), then for each of
`--seeds` seeds runs the student side with `models.compress.run_compress` (distil, prune when
the recipe prunes, quantize, bundle) and trains `ce_baseline`, the student's exact shape on
plain cross-entropy with the same epoch budget. Every stage is measured the same way
(`benchmarks.compress_measure`: model bytes per file, encoder and end-to-end µs in one
runtime and thread, encoder parameters and FLOPs, per-user ranks); the served stage's
accuracy comes from the service's own loader and request path. Writes, under `--out`:

    compress-<dataset>.json        stages (mean ± sd over seeds, bootstrap interval), every
                                   seed's records, paired tests, targets (Beauty only),
                                   provenance
    compress-<dataset>.md          the same as tables
    compress-<dataset>.png         NDCG@10 against model bytes and against e2e µs/row
    compress-<dataset>-ranks.npz   per-user ranks of every stage and seed

`<dataset>` is the data file's stem (`amazon-beauty`). Bundles, the teacher checkpoint and
run_compress's own reports go to `--work` (default `benchmarks/work/`, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import shutil
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from benchmarks.compress_measure import (
    TIMING_ROUNDS,
    StageTimer,
    TimingInputs,
    fp32_stage,
    fp32_timer,
    served_stage,
    served_timer,
    time_together,
    timing_inputs,
)
from benchmarks.compress_report import (
    Ranks,
    aggregate,
    duration,
    evaluate_targets,
    paired_tests,
    render_markdown,
    render_plot,
)
from benchmarks.provenance import cpu_model, git, python_exe
from benchmarks.serve_bundles import BEAUTY_ITEMS
from bundle.io import sha256_file
from bundle.manifest import ItemEncoding
from models.cli import DEMO_OVERRIDES
from models.compress import (
    CompressConfig,
    PreparedData,
    TrainedTeacher,
    cache_teacher,
    fit_ce_baseline,
    fit_teacher,
    load_teacher,
    make_variant,
    prepare_data,
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
from models.readers import DataFormatError
from models.train import bf16_speedup

# --- recipes ---------------------------------------------------------------------------------
# A recipe is a set of CompressConfig overrides on top of CompressConfig's defaults. Every
# choice below was made on validation NDCG@10 (the early-stopping sample of 10,000 users).
RECIPES: dict[str, dict[str, Any]] = {
    # Amazon Beauty: 256-wide teacher, 64-wide student (the published SASRec+ width).
    # Teacher (fp32, constant lr 1e-3, batch 256): validation NDCG@10 by epoch 0.0133, 0.0276,
    # 0.0374, 0.0415, 0.0426; bf16 cost it 1.4% (0.0420), so it trains in fp32.
    # Student, distilled from the teacher's top-256 per position: started from the teacher's
    # PCA-projected embeddings it reached validation 0.0414 after 4 epochs where a random
    # start had 0.0330 after 5; at constant lr it peaked at epoch 7 (0.0436) in a run of 8,
    # hence 7 epochs. ce_baseline gets the student's 7 epochs and schedule.
    # Pruning and item tables: validation trials from one seed-0 student
    # (`python -m benchmarks.compress_trials`, benchmarks/results/compress-trials-amazon-beauty.jsonl;
    # docs/decisions/2026-12-06-beauty-pruning-and-item-tables.md): removing 75% of the FFN
    # units (Taylor-ranked) leaves 65% of the encoder parameters and, after 2 epochs of
    # distillation, costs less validation NDCG@10 than removing one head of two and half the
    # FFN units (53%). The pq4 variants fine-tune 3 epochs with their codes reassigned every
    # step (items may change codes as the codebooks move): at M = 32 validation was still
    # rising at the third epoch. Item tables stay int8 rows: int4 rows and pq4 codes lost
    # more validation NDCG@10 in the trials; they ship as measured variants.
    "beauty": {
        "max_len": 50,
        "teacher_dim": 256,
        "teacher_blocks": 2,
        "teacher_heads": 2,
        "teacher_head_dim": 128,
        "teacher_ffn": 256,
        "teacher_epochs": 5,
        "student_dim": 64,
        "student_blocks": 2,
        "student_heads": 2,
        "student_head_dim": 32,
        "student_ffn": 128,
        "student_epochs": 7,
        "student_init": "teacher_pca",
        "student_lr_schedule": "constant",
        "finetune_lr_schedule": "cosine",
        "dropout": 0.25,
        "batch_size": 256,
        "lr": 1e-3,
        "patience": 2,
        # bf16 catalog products where they are faster (measured at start, `bf16_speedup`):
        # 3.15x faster than fp32 on an AMD EPYC with AVX512-BF16, 100x slower on one with
        # only AVX2, slower too on an Intel Xeon with AVX-512 but no AMX.
        "bf16": "auto",
        "bf16_teacher": False,
        "temperature": 2.0,
        "alpha": 0.7,
        # The teacher runs once over the training positions and keeps its 256 best items per
        # position (models.distill): a distillation epoch then costs 3.3 min instead of 5.2
        # (Intel Xeon, AVX-512, 2 cores; one-off timing of 6 batches of 256).
        "distill_top_k": 256,
        "prune_ratio": 0.75,
        "prune_heads": False,
        "prune_hidden_ratio": 0.0,
        "finetune_epochs": 2,
        "pq_finetune_epochs": 3,
        "pq_reassign": True,
    },
    # The demo's tiny settings (`python -m models demo`): seconds on small data.
    "demo": dict(DEMO_OVERRIDES),
}
DEFAULT_RECIPE = "beauty"
# pq4 item tables shipped beside the recipe's bundle, from the first seed's model (M
# subspaces of 4-bit codes: M / 2 bytes per item against 68 for int8 rows at d = 64); an
# int4-rows bundle (36 bytes per item at d = 64) is shipped beside it in every recipe
PQ_VARIANTS: dict[str, tuple[int, ...]] = {"beauty": (8, 16, 32), "demo": ()}
BF16_AUTO = "auto"  # a recipe's "bf16": measure, then use bf16 where it is this much faster
BF16_MIN_SPEEDUP = 1.5

# --- published references --------------------------------------------------------------------
# Klenitskiy & Vasilev, RecSys 2023, on exactly ../shared/data/amazon-beauty.txt
# (leave-one-out, full ranking, seen items removed); see ../shared/data/README.md.
BEAUTY_SHA256 = "f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49"
BEAUTY_SOURCE = (
    "Klenitskiy & Vasilev, 'Turning Dross Into Gold Loss: is BERT4Rec really better than "
    "SASRec?', RecSys 2023 (via ../shared/data/README.md)"
)
BEAUTY_REFERENCES: list[dict[str, Any]] = [
    {"name": "SASRec+ (published)", "hr@10": 0.0533, "ndcg@10": 0.0327},
    {"name": "BERT4Rec (published)", "hr@10": 0.0338, "ndcg@10": 0.0187},
    {"name": "SASRec+ 3000 negatives (published)", "hr@10": 0.0490, "ndcg@10": 0.0295},
]


# --- config ----------------------------------------------------------------------------------
_HINTS = typing.get_type_hints(CompressConfig)
_FIELDS = {f.name for f in dataclasses.fields(CompressConfig)}
_NOT_SETTABLE = {"data", "out"}  # --data and --work


def parse_value(name: str, raw: str) -> Any:
    """Convert a `--set name=raw` string to the type of CompressConfig field `name`."""
    if name not in _FIELDS:
        raise ValueError(f"unknown CompressConfig field {name!r}")
    if name in _NOT_SETTABLE:
        raise ValueError(f"{name!r} is set by its own flag, not --set")
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    if hint is bool:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{name} takes true or false, not {raw!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ValueError(f"{name} takes one of {', '.join(map(str, choices))}, not {raw!r}")
        return raw
    if origin is tuple:
        return tuple(int(x) for x in raw.replace(",", " ").split())
    if hint in (int, float, str):
        return hint(raw)
    raise ValueError(f"cannot set {name} ({hint}) from the command line")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, not {item!r}")
        name = key.strip().replace("-", "_")
        out[name] = parse_value(name, raw.strip())
    return out


def build_config(
    *,
    data: str,
    work: Path,
    recipe: str,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> CompressConfig:
    values: dict[str, Any] = dict(RECIPES[recipe])
    if device is not None:
        values["device"] = device
    values.update(overrides or {})
    values.setdefault("version", f"bench-{recipe}")
    if values.get("bf16") == BF16_AUTO:
        speedup = bf16_speedup(
            int(values.get("teacher_dim", CompressConfig.teacher_dim)),
            BEAUTY_ITEMS,
            device=str(values.get("device", "cpu")),
        )
        values["bf16"] = speedup >= BF16_MIN_SPEEDUP
        _log(
            f"bf16 products {speedup:.2f}x as fast as fp32 here: bf16 {'on' if values['bf16'] else 'off'}"
        )
    return CompressConfig(data=data, out=str(work), **values)


def parse_variants(raw: str | None, recipe: str) -> tuple[int, ...]:
    """`--pq-variants`: "8,16,32" -> (8, 16, 32); None -> the recipe's; "" -> none."""
    if raw is None:
        return PQ_VARIANTS.get(recipe, ())
    try:
        values = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError as e:
        raise ValueError(f"--pq-variants takes comma-separated integers, got {raw!r}") from e
    if any(m < 2 or m % 2 for m in values):
        raise ValueError(f"--pq-variants: subspace counts must be even and >= 2, got {raw!r}")
    return values


# --- provenance ------------------------------------------------------------------------------
def command_line(argv: Sequence[str]) -> str:
    return shlex.join([python_exe(), "-m", "benchmarks.compress", *argv])


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    return cpu_model()


# --- results ---------------------------------------------------------------------------------
MEASUREMENT_NOTE = (
    "NDCG@10 and HR@10: test split, mean ± sd over the student seeds (the teacher is one "
    "model), 95% CI: bootstrap over test users of the per-user NDCG@10 averaged over seeds. "
    "The served stage is evaluated through the service (its loader, request path and scorer "
    "at default settings, micro-batches of the service's size, top-k answers); the other "
    "stages by the pipeline (fp32 ONNX encoder against the fp32 item table, full ranking, "
    "seen items removed). model bytes: unpacked files each stage needs to answer. enc µs: "
    "onnxruntime encoder, 1 thread, 32 test histories padded to max_len (b32: per row); e2e "
    "µs: encode + score every item + top 10 with the service's scorer, 1 thread, same inputs. "
    "Times: every stage timed in turn at the end of the run on one pinned core, "
    f"{TIMING_ROUNDS} rounds (the last seed's models and bundle, the teacher among them), "
    "the median of the rounds; the per-seed "
    "times under `runs` are context. "
    "encoder MFLOP: matrix products of one request at max_len, item table excluded."
)


def references_for(dataset: str, sha256: str) -> dict[str, Any]:
    applies = sha256 == BEAUTY_SHA256
    return {
        "dataset": "amazon-beauty",
        "sha256": BEAUTY_SHA256,
        "applies_to_this_data": applies,
        "source": BEAUTY_SOURCE,
        "protocol": "leave-one-out test, full ranking, seen items removed",
        "models": BEAUTY_REFERENCES,
    }


def pruning_summary(stages: list[dict[str, Any]], pipeline: dict[str, Any]) -> dict[str, Any]:
    """What pruning removed from the student's encoder (item table excluded), as measured."""
    by = {s["name"]: s for s in stages}
    ratio = pipeline.get("pruning", {}).get("ratio")
    if "pruned" not in by:
        return {
            "ran": False,
            "encoder_params_removed": 0.0,
            "encoder_flops_removed": 0.0,
            "summary": f"No pruning stage: the recipe's prune_ratio is {ratio}, so pruning "
            "would remove nothing and the served model is the distilled student, quantized.",
        }
    student, pruned = by["student"], by["pruned"]
    params = 1 - pruned["encoder_params"] / student["encoder_params"]
    flops = 1 - pruned["encoder_flops"] / student["encoder_flops"]
    return {
        "ran": True,
        "encoder_params_removed": params,
        "encoder_flops_removed": flops,
        "summary": f"Pruning (ratio {ratio}) removed {params:.1%} of the student's encoder "
        f"parameters and {flops:.1%} of its encoder FLOPs (item table excluded).",
    }


def build_results(
    runs: list[list[dict[str, Any]]],
    ranks: Ranks,
    reports: list[dict[str, Any]],
    *,
    dataset: str,
    data_path: Path,
    data_sha256: str,
    command: str,
    recipe_name: str,
    wall_seconds: float,
    config: CompressConfig,
    seeds: list[int],
    teacher_reused: dict[str, Any] | None,
    provenance: dict[str, Any],
    together: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`together` (from `time_together`) replaces each stage's per-seed timing medians."""
    report = reports[0]
    served_name = str(report["served_stage"])
    fp32_name = served_name.removesuffix("+int8")
    stages = aggregate(runs, ranks)
    for row in stages:
        if together and row["name"] in together:
            row.update(together[row["name"]])
            row["timed"] = "together"
    applies = data_sha256 == BEAUTY_SHA256
    pipeline = {k: v for k, v in report.get("recipe", {}).items() if k != "config"}
    return {
        "dataset": dataset,
        "data": {"path": str(data_path), "sha256": data_sha256, **report.get("dataset", {})},
        "command": command,
        **provenance,
        "served_stage": served_name,
        "device": config.device,
        "device_name": _device_name(config.device),
        "seeds": seeds,
        "teacher_seed": config.seed,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "latency_threads": 1,
        "wall_seconds": round(wall_seconds, 2),
        "teacher_reused": teacher_reused,
        "recipe_name": recipe_name,
        "recipe": _jsonable(dataclasses.asdict(config)),
        "evaluation": report.get("evaluation", ""),
        "measurement_note": MEASUREMENT_NOTE,
        "references": references_for(dataset, data_sha256),
        "popularity": report["popularity"],
        "stages": stages,
        "pruning": pruning_summary(stages, pipeline),
        "paired_tests": paired_tests(ranks, served_name, fp32_name, "ce_baseline"),
        "targets": evaluate_targets(stages, served_name) if applies else None,
        "targets_note": "The targets were set for amazon-beauty (sha256 "
        f"{BEAUTY_SHA256[:12]}…) and are evaluated only there."
        + ("" if applies else f" Not evaluated on {dataset}."),
        "runs": [{"seed": s, "stages": run} for s, run in zip(seeds, runs, strict=True)],
        "pipelines": [
            {
                "seed": s,
                "timings_s": r.get("timings_s", {}),
                **{k: v for k, v in r.get("recipe", {}).items() if k != "config"},
            }
            for s, r in zip(seeds, reports, strict=True)
        ],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_ranks(path: Path, ranks: Ranks) -> None:
    """Per-user ranks of every stage and seed (users in test-split order; -1 = not in the
    service's answer), so any two stages can be compared later."""
    arrays = {f"{stage}/seed{seed}": r.astype(np.int32) for stage, by in ranks.items()
              for seed, r in by.items()}  # fmt: skip
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


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
) -> tuple[
    list[dict[str, Any]], dict[str, npt.NDArray[np.int64]], dict[str, Any], dict[str, StageTimer]
]:
    """The student side for one seed (distil, prune, quantize) and the cross-entropy baseline,
    every stage measured: (records, ranks by stage, run_compress's report, and what each stage
    runs to answer, teacher included, for `time_together`). Variants of the same fp32 model
    with other item tables: `<model>+int8` (int8 rows) when the recipe ships another encoding,
    `<model>+int4` (int4 rows) with `int4_variant`, and for each M of
    `pq_variants` `<model>+pq4m<M>` (fp32, the decoded table) and `<model>+pq4m<M>+int8`."""
    result = run_compress(config, prep=prep, trained_teacher=teacher, cached=cached)
    report = result.report
    test = prep.split.test
    ks = tuple(config.ks)
    timing = timing_inputs(test, config.max_len, config.latency_budget_s)
    latency = {s["stage"]: s.get("latency", {}) for s in report["stages"]}
    fits = _fits(report)
    records, ranks = [], {}
    timers = {name: fp32_timer(m, result.fp32_onnx[name]) for name, m in result.models.items()}
    for name, model in result.models.items():
        if name == "teacher" and not with_teacher:
            continue
        rec = fp32_stage(name, model, result.fp32_onnx[name], result.ranks[name], timing,
                         seed=config.seed, ks=ks, torch_latency=latency.get(name))  # fmt: skip
        records.append({**rec, **fits.get(name, {})})
        ranks[name] = result.ranks[name]
    served = str(report["served_stage"])
    fp32 = result.models[served.removesuffix("+int8")]
    rec, ranks[served] = served_stage(
        served, result.bundle_dir, result.archive, fp32, test, prep.data.vocab, timing,
        seed=config.seed, ks=ks,
    )  # fmt: skip
    # The pipeline's own figure for the bundle (fp32 user vectors x dequantized items, batches
    # of 256): what the service's 7-bit users and micro-batches change is the difference.
    rec["pipeline_ndcg@10"] = report["stages"][-1]["metrics"]["ndcg@10"]
    records.append({**rec, "train_seconds": report["timings_s"].get("quantize")})
    timers[served] = served_timer(result.bundle_dir)
    records.append(_ce_baseline(config, prep, timing, ks))
    ranks["ce_baseline"] = records[-1].pop("ranks")
    timers["ce_baseline"] = records[-1].pop("timer")
    variants: list[tuple[ItemEncoding, int]] = [("int4", 0)] if int4_variant else []
    if config.item_encoding != "int8":  # int8 rows, what every other encoding is compared with
        variants.insert(0, ("int8", 0))
    shipped = (config.item_encoding, config.pq_subspaces)
    variants += [("pq4", m) for m in pq_variants if ("pq4", m) != shipped]
    for encoding, subspaces in variants:
        v = make_variant(config, result, prep, teacher.model, cached, encoding=encoding,
                         subspaces=subspaces)  # fmt: skip
        if v.fp32_name not in result.models:  # pq4: the decoded table is a model of its own
            _, ranks[v.fp32_name] = evaluate_ranks(
                onnx_encoder(v.fp32_onnx), item_array(v.fp32_model), test,
                max_len=config.max_len, ks=ks,
            )  # fmt: skip
            rec = fp32_stage(v.fp32_name, v.fp32_model, v.fp32_onnx, ranks[v.fp32_name],
                             timing, seed=config.seed, ks=ks)  # fmt: skip
            records.append({**rec, "item_table": v.item_table})
            timers[v.fp32_name] = fp32_timer(v.fp32_model, v.fp32_onnx)
        rec, ranks[v.served_name] = served_stage(
            v.served_name, v.bundle_dir, v.archive, v.fp32_model, test, prep.data.vocab, timing,
            seed=config.seed, ks=ks,
        )  # fmt: skip
        records.append({**rec, "item_table": v.item_table})
        timers[v.served_name] = served_timer(v.bundle_dir)
    return records, ranks, report, timers


def _fits(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Training time and validation NDCG@10 of each trained stage (from its pipeline report)."""
    t, recipe = report["timings_s"], report["recipe"]
    out = {
        "teacher": {"train_seconds": t.get("teacher"), "val_ndcg@10": recipe["teacher"]["val_ndcg@10"]},
        "student": {"train_seconds": t.get("student"),
                    "val_ndcg@10": recipe["distillation"]["val_ndcg@10"]},
    }  # fmt: skip
    if recipe["pruning"].get("ran"):
        out["pruned"] = {"train_seconds": t.get("prune_finetune"),
                         "val_ndcg@10": recipe["pruning"]["finetune_val_ndcg@10"]}  # fmt: skip
    return out


def _ce_baseline(
    config: CompressConfig, prep: PreparedData, timing: TimingInputs, ks: tuple[int, ...]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, fit = fit_ce_baseline(config, prep)
    seconds = time.perf_counter() - t0
    model.cpu().eval()
    onnx_model = export_onnx(model)
    _, ranks = evaluate_ranks(onnx_encoder(onnx_model), item_array(model), prep.split.test,
                              max_len=config.max_len, ks=ks)  # fmt: skip
    with torch_threads(1):
        torch_lat = measure_latency(torch_encoder(model), timing.inputs, budget_s=timing.budget_s)
    rec = fp32_stage("ce_baseline", model, onnx_model, ranks, timing, seed=config.seed, ks=ks,
                     torch_latency={f"torch_{k}": v for k, v in torch_lat.items()})  # fmt: skip
    return {**rec, "train_seconds": round(seconds, 2), "val_ndcg@10": fit.best_ndcg,
            "best_epoch": fit.best_epoch, "ranks": ranks,
            "timer": fp32_timer(model, onnx_model)}  # fmt: skip


# --- the teacher ---------------------------------------------------------------------------------
def teacher_for(
    config: CompressConfig, prep: PreparedData, work: Path, data_sha256: str, reuse: Path | None
) -> tuple[TrainedTeacher, dict[str, Any] | None]:
    """The one teacher every seed distils from: loaded from `reuse` (checked to be what this
    run would train) or trained now and saved under `work` for a later run's --teacher."""
    if reuse is not None:
        teacher = load_teacher(reuse, config, n_items=prep.data.n_items, data_sha256=data_sha256)
        _log(f"teacher loaded from {reuse} (trained in {teacher.seconds:.0f} s)")
        return teacher, {"path": str(reuse), "train_seconds": teacher.seconds}
    teacher = fit_teacher(config, prep)
    save_teacher(work / f"teacher-seed{config.seed}.pt", config, teacher, data_sha256=data_sha256)
    return teacher, None


# --- command line ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compress", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", required=True, type=Path, help="interactions file")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="where the JSON, markdown, PNG and ranks go (default: benchmarks/results)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("benchmarks/work"),
                   help="bundles, teacher and raw pipeline reports (default: benchmarks/work, ignored)")  # fmt: skip
    p.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE)
    p.add_argument("--seeds", type=int, default=3,
                   help="student-side repeats (distil, prune, quantize, ce_baseline) from one teacher")  # fmt: skip
    p.add_argument("--teacher", type=Path, default=None,
                   help="reuse a teacher an earlier run saved (work/<dataset>/teacher-seed<N>.pt); "
                   "refused unless it was trained on this data with this recipe's settings")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu or cuda (default: the recipe's, cpu)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a CompressConfig field, e.g. --set prune_ratio=0.3")  # fmt: skip
    p.add_argument("--pq-variants", default=None, metavar="M,M,...",
                   help="also ship pq4 bundles of these subspace counts from the first seed's "
                   "model, beside its int4-rows bundle (default: the recipe's; '' for none)")  # fmt: skip
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    return p


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _clear_previous(work: Path, version: str) -> None:
    """The harness owns its work dir: remove the previous run of this version (every seed)."""
    for path in work.glob(f"{version}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plot needs matplotlib: pip install -e '.[bench]' (or --no-plot)")
    data_path: Path = args.data
    if not data_path.is_file():
        parser.error(f"no such data file: {data_path}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.teacher is not None and not args.teacher.is_file():
        parser.error(f"no such teacher checkpoint: {args.teacher}")
    try:
        overrides = parse_sets(args.sets)
    except ValueError as e:
        parser.error(str(e))
    try:
        variants = parse_variants(args.pq_variants, args.recipe)
    except ValueError as e:
        parser.error(str(e))
    dataset = data_path.stem
    work = args.work / dataset
    config = build_config(
        data=str(data_path), work=work, recipe=args.recipe, device=args.device,
        overrides=overrides,
    )  # fmt: skip
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {config.device}: no CUDA device here")
    command = command_line(argv)
    # The code that runs is the code at the start: commits made during a long run are not in it.
    dirty = git("status", "--porcelain")
    provenance = {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
    }
    _log(f"{command}")
    _log(f"dataset {dataset}, recipe {args.recipe}, device {config.device}, work dir {work}")
    data_sha256 = sha256_file(data_path)
    _clear_previous(work, config.version)
    try:
        prep = prepare_data(config)
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        teacher, reused = teacher_for(config, prep, work, data_sha256, args.teacher)
    except ValueError as e:
        parser.error(str(e))
    cached = cache_teacher(config, teacher.model, prep)
    seeds = [config.seed + i for i in range(args.seeds)]
    runs: list[list[dict[str, Any]]] = []
    reports: list[dict[str, Any]] = []
    ranks: Ranks = {}
    timers: dict[str, StageTimer] = {}
    for i, seed in enumerate(seeds):
        _log(f"student side, seed {seed} ({i + 1} of {len(seeds)})")
        seed_config = dataclasses.replace(config, seed=seed, version=f"{config.version}-s{seed}")
        # Other item encodings of the same model: on the first seed (they cost minutes each).
        records, seed_ranks, report, seed_timers = run_seed(
            seed_config, prep, teacher, cached, with_teacher=i == 0, int4_variant=i == 0,
            pq_variants=variants if i == 0 else (),
        )  # fmt: skip
        timers.update(seed_timers)  # the last seed's stages, and the first seed's variants
        runs.append(records)
        reports.append(report)
        for stage, r in seed_ranks.items():
            ranks.setdefault(stage, {})[seed] = r
    _log(f"timing every stage together ({TIMING_ROUNDS} rounds, the last seed's models)")
    timing = timing_inputs(prep.split.test, config.max_len, config.latency_budget_s)
    together = time_together(timers, timing)
    wall = time.perf_counter() - t_start
    results = build_results(
        runs, ranks, reports, dataset=dataset, data_path=data_path, data_sha256=data_sha256,
        command=command, recipe_name=args.recipe, wall_seconds=wall, config=config,
        seeds=seeds, teacher_reused=reused, provenance=provenance, together=together,
    )  # fmt: skip
    _write(results, ranks, args.out, dataset, plot=not args.no_plot)
    _log(f"wall time {duration(wall)}; targets "
         + ("not evaluated" if results["targets"] is None
            else "PASS" if results["targets"]["all_passed"] else "FAIL"))  # fmt: skip
    return 0


def _write(results: dict[str, Any], ranks: Ranks, out: Path, dataset: str, *, plot: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compress-{dataset}"
    stem.with_suffix(".json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    markdown = render_markdown(results)
    stem.with_suffix(".md").write_text(markdown, encoding="utf-8")
    save_ranks(out / f"compress-{dataset}-ranks.npz", ranks)
    if plot:
        render_plot(results, stem.with_suffix(".png"))
    print()
    print(markdown)
    _log(f"wrote {stem}.{{json,md,png}} and {stem}-ranks.npz")


if __name__ == "__main__":
    sys.exit(main())
