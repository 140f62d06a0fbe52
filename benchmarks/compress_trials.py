"""Validation trials for the compression recipe: one pruning or PQ setting at a time.

    python -m benchmarks.compress_trials --data ../shared/data/amazon-beauty.txt student
    python -m benchmarks.compress_trials --data ... prune --ratio 0.5 --epochs 2
    python -m benchmarks.compress_trials --data ... prune --ratio 0.75 --epochs 2 --ffn-only
    python -m benchmarks.compress_trials --data ... pq --subspaces 32 --epochs 2 --reassign

`student` trains (or, with the teacher saved by an earlier run, reuses) the recipe's teacher,
caches its top-K, distils the seed-0 student and saves all three under the work dir; the
other trials start from them, so each costs only its own fine-tuning. Every trial appends one
JSON line (validation NDCG@10 on the recipe's early-stopping sample, never test; encoder
parameters; seconds) to `benchmarks/results/compress-trials-<dataset>.jsonl`: the evidence
the recipe's choices cite. The test split is not touched.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import bundle
from benchmarks.compress_recipes import build_config
from benchmarks.compress_seeds import teacher_for
from benchmarks.provenance import cpu_model, git
from bundle.io import sha256_file
from models.compress import (
    CompressConfig,
    PreparedData,
    cache_teacher,
    load_checkpoint,
    load_teacher,
    prepare_data,
    product_quantize,
    save_checkpoint,
)
from models.distill import TeacherTopK, distill_student
from models.evaluate import item_array
from models.pq import decoded_copy, train_pq, with_pq_items
from models.prune import PruneConfig, prune_and_finetune
from models.sasrec import SASRec, encoder_params
from models.train import validation_ndcg

RESULTS = Path("benchmarks/results")


@dataclasses.dataclass
class Start:
    config: CompressConfig
    prep: PreparedData
    teacher: SASRec
    cached: TeacherTopK | None


def _validation(model: SASRec, prep: PreparedData) -> float:
    return round(validation_ndcg(model.eval(), prep.train_split.valid), 5)


def train_student(
    config: CompressConfig, prep: PreparedData, work: Path, data: Path
) -> dict[str, Any]:
    reuse = work / f"teacher-seed{config.seed}.pt"
    teacher, _ = teacher_for(
        config, prep, work, sha256_file(data), reuse if reuse.is_file() else None
    )
    cached = cache_teacher(config, teacher.model, prep)
    torch.save(cached, work / "trials-teacher-top-k.pt")
    student, fit = distill_student(
        teacher.model,
        config.student_config(prep.data.n_items),
        prep.train_split,
        config.train_config(config.student_epochs, config.student_lr_schedule),
        config.distill_config(),
        cached=cached,
    )
    save_checkpoint(student.cpu().eval(), work / "trials-student.pt")
    return {"teacher_val": teacher.fit.best_ndcg, "student_val": fit.best_ndcg}


def load_start(config: CompressConfig, prep: PreparedData, work: Path, data: Path) -> Start:
    teacher = load_teacher(
        work / f"teacher-seed{config.seed}.pt",
        config,
        n_items=prep.data.n_items,
        data_sha256=sha256_file(data),
    )
    cached = torch.load(work / "trials-teacher-top-k.pt", weights_only=False)
    return Start(config, prep, teacher.model, cached)


def prune_trial(
    s: Start, base: SASRec, *, ratio: float, epochs: int, ffn_only: bool
) -> dict[str, Any]:
    c = s.config
    pruned, info, fit = prune_and_finetune(
        base,
        s.teacher,
        s.prep.train_split,
        prune_config=PruneConfig(
            ratio=ratio, prune_heads=not ffn_only, importance_batches=c.importance_batches
        ),
        train_config=c.train_config(epochs, c.finetune_lr_schedule),
        distill_config=c.distill_config(),
        cached=s.cached,
    )
    return {
        "val": _validation(pruned, s.prep),
        "encoder_params": encoder_params(pruned),
        "kept_heads": info.kept_heads,
        "kept_ffn": info.kept_ffn,
        "finetune_history": fit.history,
        "model": pruned,
    }


def pq_trial(
    s: Start, base: SASRec, *, subspaces: int, epochs: int, reassign: bool
) -> dict[str, Any]:
    table = train_pq(item_array(base), m=subspaces, seed=s.config.seed)
    posthoc = _validation(decoded_copy(with_pq_items(base, table)), s.prep)
    c = dataclasses.replace(
        s.config,
        item_encoding="pq4",
        pq_subspaces=subspaces,
        pq_finetune_epochs=epochs,
        pq_reassign=reassign,
    )
    _, model, info = product_quantize(c, base, s.teacher, s.prep.train_split, s.cached)
    return {"posthoc_val": posthoc, "val": _validation(model, s.prep), "item_table": info}


def int4_trial(s: Start, base: SASRec) -> dict[str, Any]:
    """The model with its tied item table replaced by its int4 rows (error-corrected scales,
    `bundle.items.quantize_int4`), decoded: no training."""
    stored, scales = bundle.encode_items(item_array(base), "int4")
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.from_numpy(bundle.decode_items(stored, scales)))
    return {"val": _validation(model, s.prep)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compress_trials", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--recipe", default="beauty")
    p.add_argument("--work", type=Path, default=Path("benchmarks/work"))
    p.add_argument(
        "--base",
        default="trials-student.pt",
        help="checkpoint (in the work dir) the trial starts from, e.g. a pruned one",
    )
    p.add_argument("--save", default="", help="save the trial's model as this checkpoint")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSONL goes")
    sub = p.add_subparsers(dest="trial", required=True)
    sub.add_parser("student", help="teacher (reused if saved), its top-K, the seed-0 student")
    pr = sub.add_parser("prune", help="Taylor pruning + distillation fine-tune")
    pr.add_argument("--ratio", type=float, required=True)
    pr.add_argument("--epochs", type=int, required=True)
    pr.add_argument("--ffn-only", action="store_true")
    pq = sub.add_parser("pq", help="4-bit PQ of the item table + distillation fine-tune")
    pq.add_argument("--subspaces", type=int, required=True)
    pq.add_argument("--epochs", type=int, required=True)
    pq.add_argument("--reassign", action="store_true")
    sub.add_parser("int4", help="the item table as int4 rows, no training")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = args.work / args.data.stem
    config = build_config(
        data=str(args.data), work=work, recipe=args.recipe, overrides={"progress": False}
    )
    prep = prepare_data(config)
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "trial": args.trial,
        "args": {k: v for k, v in vars(args).items() if k not in ("data", "work", "results")},
    }
    if args.trial == "student":
        record.update(train_student(config, prep, work, args.data))
    else:
        start = load_start(config, prep, work, args.data)
        base = load_checkpoint(work / args.base)
        record.update(base_val=_validation(base, prep), base_encoder_params=encoder_params(base))
        if args.trial == "prune":
            record.update(
                prune_trial(
                    start, base, ratio=args.ratio, epochs=args.epochs, ffn_only=args.ffn_only
                )
            )
        elif args.trial == "int4":
            record.update(int4_trial(start, base))
        else:
            record.update(
                pq_trial(
                    start,
                    base,
                    subspaces=args.subspaces,
                    epochs=args.epochs,
                    reassign=args.reassign,
                )
            )
    model = record.pop("model", None)
    if args.save and model is not None:
        save_checkpoint(model.cpu().eval(), work / args.save)
    record.update(
        seconds=round(time.perf_counter() - t0),
        cpu=cpu_model(),
        git_commit=git("rev-parse", "HEAD"),
    )
    args.results.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=str)
    with (args.results / f"compress-trials-{args.data.stem}.jsonl").open(
        "a", encoding="utf-8"
    ) as f:
        f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
