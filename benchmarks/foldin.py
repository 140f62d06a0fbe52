"""Item fold-in on real data: how well `models.foldin` places items a bundle never saw, measured
through the service's own catalog layer, loader and request path.

    python -m benchmarks.foldin --data ../shared/data/amazon-beauty.txt \\
        --out benchmarks/results/catalog-foldin.json [--held-out 0.1] [--seed 0] [--epochs 5]

Most of its time goes to training the bundle (kept and reused by a rerun with the same
settings) and to the softmax fits. Protocol:

1. Leave-one-out per user, as `models.split`: the training period is seq[:-2], the validation
   event seq[-2] after seq[:-2], the test event seq[-1] after seq[:-1].
2. A share of the items (`--held-out`, 10%), drawn uniformly among the distinct items (not
   weighted by their interactions) with `--seed`, is held out: removed from every sequence,
   so the bundle is trained as if they had not launched yet.
3. The bundle: the project's pipeline on that reduced data (`models.compress.prepare_data`,
   with its own leave-one-out, so it trains only on the training period): the Beauty
   recipe's student shape trained on plain cross-entropy for `--epochs`
   (`models.compress.fit_ce_baseline`), exported, static INT8 calibrated on training
   histories, int8 item rows shared with the encoder: what `run_compress` ships, without the
   teacher, distillation and pruning, which would take an hour more.
4. Fold-in: `models.foldin` on every user's training period, held-out items included, by
   both methods: softmax (the new rows fitted by full-catalog cross-entropy over the
   training positions, `--negatives` of those whose next item is known sampled with
   `--seed`) and least squares.
5. Events: the validation and test events whose target is a held-out item, and to see what
   the new items cost, the others. Each is answered
   as `POST /recommend` {"history": h, "k": 10} is (`benchmarks.service_eval`), by the bundle
   loaded as the service loads it (`service.loading.load_model`): with the fold-in vectors
   encoded by the model (`encode_vectors`) and merged by `with_catalog` (fold-in), or without
   them (the bundle alone, which cannot answer a held-out item). Popularity ranks every item,
   held-out ones included, by its training-period count, the history excluded, ties by first
   appearance in the file (`models.evaluate.ranks_from_scores`).
6. Each method's settings (softmax: `--l2s`; least squares: `--ridges` x `--target-ranks`)
   are chosen on validation NDCG@10 over its grid, on all validation events: the
   held-out-target ones and a seeded sample of the others (weighted to their number); the
   method whose choice is better there is reported as "chosen" (`models.foldin`'s default). New items take
   answer slots from known ones, and the best setting on held-out-target events alone can
   fill most slots with new items; each method's such setting is reported beside its choice,
   with what it costs the other events and the share of answer slots new items take. The
   test events are answered once per setting reported. Intervals: 95% percentile bootstrap
   over events; softmax against least squares by a paired test on the same events.

Writes the JSON to `--out` and a markdown table beside it (same stem, .md). The reduced data
and the bundle go to `--work` (git-ignored); a bundle trained there earlier with the same
data and settings is reused (the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import bundle
from benchmarks.compress_recipes import build_config
from benchmarks.foldin_report import K, render_markdown
from benchmarks.harness.log import logger
from benchmarks.provenance import run_provenance
from benchmarks.service_eval import (
    default_settings,
    ranks_from_answers,
    service_answers,
    service_options,
)
from benchmarks.stats import bootstrap_ci, gains, paired_test
from bundle.io import sha256_file
from bundle.shared_items import check_linked_bundle, link_item_table, share_item_table
from models.compress import (
    CompressConfig,
    calibration_inputs,
    fit_ce_baseline,
    golden_tolerance,
    prepare_data,
)
from models.evaluate import item_array, onnx_encoder, ranks_from_scores
from models.export import export_onnx
from models.foldin import (
    METHODS,
    Evidence,
    FoldIn,
    FoldInConfig,
    fit_vectors,
    gather_evidence,
)
from models.quantize import QuantizeConfig, quantize_onnx
from models.readers import read_interactions
from models.sasrec import SASRec
from models.split import Split, pad_left
from service.catalog import CatalogLayer
from service.loading import load_model
from service.model import LoadedModel

I64 = npt.NDArray[np.int64]

RIDGES: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
TARGET_RANKS: tuple[int, ...] = (1, 3, 10, 30)
L2S: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
# Validation events with known targets the tuning answers (a seeded sample): enough to see
# what new items cost the other answers, in a few seconds per setting.
KNOWN_SAMPLE = 10_000
BUNDLE_VERSION = "foldin-base"

log = logger("foldin")


@dataclass
class Events:
    """Recommendation events: the history before each (external IDs) and what came next."""

    histories: list[list[str]]
    targets: list[str]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class HeldOutSplit:
    held_out: frozenset[str]
    reduced: list[list[str]]  # every user's sequence without the held-out items
    train_period: list[list[str]]  # every user's seq[:-2], held-out items included
    valid: Events  # seq[-2] after seq[:-2], where seq[-2] is held out
    test: Events  # seq[-1] after seq[:-1], where seq[-1] is held out
    valid_known: Events  # the other users' validation events: the bundle knows the target
    test_known: Events  # the other users' test events


def hold_out(sequences: Sequence[Sequence[str]], *, share: float, seed: int) -> HeldOutSplit:
    """Hold out round(share * items) of the distinct items, drawn uniformly with `seed`."""
    if any(len(s) < 3 for s in sequences):
        raise ValueError("every user needs at least 3 interactions (leave-one-out)")
    items = list(dict.fromkeys(item for s in sequences for item in s))
    drawn = np.random.default_rng(seed).choice(
        len(items), size=round(share * len(items)), replace=False
    )
    held = frozenset(items[i] for i in drawn)
    return HeldOutSplit(
        held_out=held,
        reduced=[[i for i in s if i not in held] for s in sequences],
        train_period=[list(s[:-2]) for s in sequences],
        valid=_events(sequences, held, back=2, held_out=True),
        test=_events(sequences, held, back=1, held_out=True),
        valid_known=_events(sequences, held, back=2, held_out=False),
        test_known=_events(sequences, held, back=1, held_out=False),
    )


def _events(
    sequences: Sequence[Sequence[str]], held: frozenset[str], *, back: int, held_out: bool
) -> Events:
    """Per user whose item `back` from the end is (or, `held_out=False`, is not) held out:
    that item after the ones before it."""
    rows = [s for s in sequences if (s[-back] in held) == held_out]
    return Events([list(s[:-back]) for s in rows], [s[-back] for s in rows])


def sample(events: Events, n: int, *, seed: int) -> Events:
    """A seeded sample of `n` events (all of them when there are no more)."""
    if len(events) <= n:
        return events
    rows = np.sort(np.random.default_rng(seed).choice(len(events), size=n, replace=False))
    return Events([events.histories[r] for r in rows], [events.targets[r] for r in rows])


def write_interactions(
    path: Path, users: Sequence[str], sequences: Sequence[Sequence[str]]
) -> None:
    """The txt format (`user item` per line, chronological per user) `models.readers` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for user, seq in zip(users, sequences, strict=True):
            f.writelines(f"{user} {item}\n" for item in seq)


# --- the bundle ------------------------------------------------------------------------------
def train_bundle(c: CompressConfig, bundle_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Train the student shape on plain cross-entropy from `c.data` and ship it as an INT8
    bundle into `bundle_dir`; returns what was done (also the manifest's recipe)."""
    prep = prepare_data(c)
    t0 = time.perf_counter()
    model, fit = fit_ce_baseline(c, prep)
    recipe = {
        "made_by": "benchmarks/foldin.py",
        "settings": settings,
        "training": "models.compress.fit_ce_baseline: student shape, full-catalog cross-entropy",
        "epochs": c.student_epochs,
        "best_epoch": fit.best_epoch,
        "val_ndcg@10": fit.best_ndcg,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "bf16": c.bf16,
        "quantization": "static INT8 (models.quantize), int8 item rows shared with the encoder",
    }
    write_int8_bundle(
        bundle_dir,
        model.cpu().eval(),
        prep.split,
        c,
        prep.data.vocab,
        prep.data.popularity(),
        recipe=recipe,
    )
    return recipe


def write_int8_bundle(
    bundle_dir: Path,
    model: SASRec,
    split: Split,
    c: CompressConfig,
    vocab: list[str],
    popularity: I64,
    *,
    recipe: dict[str, Any],
) -> None:
    """`model` shipped as `run_compress` ships its served stage (its `_served_encoder` and
    `_write_and_pack`): static INT8 calibrated on training histories, the item table stored
    once as int8 rows that the encoder reads, golden pairs from the served encoder."""
    items = item_array(model)
    int8 = quantize_onnx(
        export_onnx(model),
        QuantizeConfig(per_channel=c.quantize_per_channel, reduce_range=c.quantize_reduce_range),
        calibration=calibration_inputs(split, c),
    )
    served = share_item_table(int8, items, "int8")
    golden = pad_left(split.valid.histories[: c.n_golden], c.max_len)
    encode = onnx_encoder(served)
    atol, _ = golden_tolerance(encode, golden)
    bundle.write_bundle(
        bundle_dir,
        model_version=bundle_dir.name,
        onnx_model=link_item_table(served),
        item_matrix=items,
        vocab=vocab,
        popularity=popularity,
        max_len=c.max_len,
        golden_inputs=golden,
        golden_outputs=encode(golden),
        item_encoding="int8",
        golden_atol=atol,
        architecture={"type": "SASRec", "config": model.config.to_dict()},
        recipe=recipe,
    )
    check_linked_bundle(bundle_dir, served)


def bundle_for(c: CompressConfig, bundle_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The bundle trained in `bundle_dir` with `settings` if there is one, else a new one;
    returns its recipe and whether it was reused."""
    if (bundle_dir / "manifest.json").is_file():
        recipe = bundle.read_bundle(bundle_dir).manifest.recipe
        if recipe.get("settings") == settings:
            return {**recipe, "reused": True}
        shutil.rmtree(bundle_dir)
    return {**train_bundle(c, bundle_dir, settings), "reused": False}


# --- measuring -------------------------------------------------------------------------------
def folded(model: LoadedModel, result: FoldIn) -> LoadedModel:
    """`model` serving the fold-in vectors, as the service does after the admin route."""
    stored = model.encode_vectors(result.item_ids, result.vectors)
    layer = CatalogLayer(revision=1, unavailable=frozenset(), items={model.version: stored})
    return model.with_catalog(layer)


def answer_ranks(model: LoadedModel, events: Events) -> I64:
    """0-based rank of each target in the service's top-K answer, -1 where it is missing."""
    return ranks_from_answers(answers(model, events), events.targets)


def answers(model: LoadedModel, events: Events) -> list[list[str]]:
    """The service's top-K answer to each event's history."""
    limit = default_settings().max_history
    return service_answers(model, [h[-limit:] for h in events.histories], k=K)


def popularity_ranks(
    train_period: Sequence[Sequence[str]], catalog: Sequence[str], events: Events
) -> I64:
    """Full-ranking rank of each target by training-period counts over `catalog` (its order
    breaks ties; entry 0 is padding), the event's history excluded."""
    index = {item: row for row, item in enumerate(catalog)}
    counts = np.zeros(len(catalog), dtype=np.float32)
    np.add.at(counts, [index[i] for s in train_period for i in s], 1)
    out: list[I64] = []
    for start in range(0, len(events), 256):
        hist = [
            np.array([index[i] for i in h], dtype=np.int64)
            for h in events.histories[start : start + 256]
        ]
        targets = np.array([index[t] for t in events.targets[start : start + 256]])
        scores = np.broadcast_to(counts, (len(hist), len(catalog)))
        out.append(ranks_from_scores(scores, targets, hist))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def summary(ranks: I64, *, prefix: str = "", seed: int = 0) -> dict[str, Any]:
    """HR@K and NDCG@K of `ranks` (a negative rank is a miss) with 95% bootstrap intervals."""
    out: dict[str, Any] = {}
    for metric in ("hr", "ndcg"):
        g = gains(ranks, K, metric)
        out[f"{prefix}{metric}@{K}"] = float(g.mean())
        out[f"{prefix}{metric}@{K}_ci95"] = list(bootstrap_ci(g, seed=seed))
    return out


def configs(
    *, ridges: Sequence[float], target_ranks: Sequence[int], l2s: Sequence[float], negatives: int
) -> list[FoldInConfig]:
    """The grid: least squares over (target rank, ridge), softmax over l2."""
    return [
        *(FoldInConfig(method="lsq", ridge=x, target_rank=t) for t in target_ranks for x in ridges),
        *(FoldInConfig(method="softmax", l2=x, negatives=negatives) for x in l2s),
    ]


def setting(config: FoldInConfig) -> dict[str, Any]:
    """What the grid varies of `config`, by method."""
    if config.method == "lsq":
        return {"method": "lsq", "ridge": config.ridge, "target_rank": config.target_rank}
    return {"method": "softmax", "l2": config.l2, "negatives": config.negatives}


def tune(
    model: LoadedModel,
    evidence: Evidence,
    split: HeldOutSplit,
    grid: Sequence[FoldInConfig],
    *,
    known_sample: int,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[FoldInConfig, FoldIn]]:
    """Validation NDCG@K of every setting: on the held-out-target events, on a seeded sample
    of the others, and on all events (the sample weighted to their number); and the fits."""
    known = sample(split.valid_known, known_sample, seed=seed)
    n_held, n_known = len(split.valid), len(split.valid_known)
    rows: list[dict[str, Any]] = []
    fits: dict[FoldInConfig, FoldIn] = {}
    for config in grid:
        t0 = time.perf_counter()
        fits[config] = fit_vectors(evidence, config)
        fit_seconds = time.perf_counter() - t0
        served = folded(model, fits[config])
        held = gains(answer_ranks(served, split.valid), K, "ndcg").mean()
        other = gains(answer_ranks(served, known), K, "ndcg").mean()
        overall = (n_held * held + n_known * other) / (n_held + n_known)
        rows.append(
            {
                **setting(config),
                f"valid_ndcg@{K}": float(held),
                f"valid_known_ndcg@{K}": float(other),
                f"valid_all_ndcg@{K}": float(overall),
                "fit_seconds": round(fit_seconds, 2),
            }
        )
        log(
            f"{setting(config)}: valid NDCG@{K} all {overall:.4f}, held-out targets {held:.4f}"
            f" (fit {fit_seconds:.1f} s)"
        )
    return rows, fits


def best(
    grid: Sequence[FoldInConfig], rows: Sequence[dict[str, Any]], key: str, method: str
) -> FoldInConfig:
    """The best setting of `method` by `key` (the first of equals)."""
    scored = [(row[key], -i) for i, row in enumerate(rows) if row["method"] == method]
    return grid[-max(scored)[1]]


def service_ranks(model: LoadedModel, split: HeldOutSplit) -> tuple[I64, I64, float]:
    """The service's ranks on the test events with held-out targets and on the others, and
    the share of all their answer slots that held-out items take."""
    held, known = answers(model, split.test), answers(model, split.test_known)
    slots = [item for answer in (*held, *known) for item in answer]
    share = sum(item in split.held_out for item in slots) / max(len(slots), 1)
    return (
        ranks_from_answers(held, split.test.targets),
        ranks_from_answers(known, split.test_known.targets),
        share,
    )


def by_events(held: I64, known: I64, *, seed: int) -> dict[str, Any]:
    """HR/NDCG@K on the held-out-target events, the other events, and all of them."""
    return {
        **summary(held, prefix="held_out_targets_", seed=seed),
        **summary(known, prefix="known_targets_", seed=seed),
        **summary(np.concatenate([held, known]), prefix="all_", seed=seed),
    }


def _test_choices(
    model: LoadedModel,
    split: HeldOutSplit,
    grid: Sequence[FoldInConfig],
    rows: Sequence[dict[str, Any]],
    fits: dict[FoldInConfig, FoldIn],
) -> tuple[dict[str, tuple[I64, I64, float]], dict[str, Any]]:
    """Each method's setting chosen on all validation events ("chosen") and on the
    held-out-target ones alone ("held_out_choice"), answered on the test events; the test
    ranks by name and each method's choices."""
    test: dict[str, tuple[I64, I64, float]] = {}
    answered: dict[FoldInConfig, tuple[I64, I64, float]] = {}
    methods: dict[str, Any] = {}
    for method in dict.fromkeys(c.method for c in grid):
        methods[method] = {}
        for name, key in (
            ("chosen", f"valid_all_ndcg@{K}"),
            ("held_out_choice", f"valid_ndcg@{K}"),
        ):
            config = best(grid, rows, key, method)
            if config not in answered:  # both choices are often the same
                answered[config] = service_ranks(folded(model, fits[config]), split)
            test[method if name == "chosen" else f"{method}_{name}"] = answered[config]
            methods[method][name] = {**rows[grid.index(config)], "on": key}
    return test, methods


def _paired(a: I64, b: I64, seed: int) -> dict[str, Any]:
    """`paired_test` of the per-event NDCG@K gains of ranks `b` against `a`."""
    return paired_test(gains(a, K, "ndcg"), gains(b, K, "ndcg"), seed=seed)


def _softmax_vs_lsq(test: dict[str, tuple[I64, I64, float]], seed: int) -> dict[str, Any]:
    """The two methods' choices against each other, when both ran."""
    if not {"lsq", "softmax"} <= test.keys():
        return {}
    lsq, soft = test["lsq"], test["softmax"]
    return {
        f"softmax_vs_lsq_held_out_targets_ndcg@{K}": _paired(lsq[0], soft[0], seed),
        f"softmax_vs_lsq_all_ndcg@{K}": _paired(
            np.concatenate(lsq[:2]), np.concatenate(soft[:2]), seed
        ),
    }


def measure(
    bundle_dir: Path,
    split: HeldOutSplit,
    catalog: Sequence[str],
    *,
    grid: Sequence[FoldInConfig],
    known_sample: int,
    seed: int,
) -> dict[str, Any]:
    """Every number of the report but provenance: each method tuned on validation, then each
    method's choices, popularity and the bundle alone on the test events."""
    model = load_model(bundle_dir, service_options())
    t0 = time.perf_counter()
    evidence = gather_evidence(
        bundle.read_bundle(bundle_dir),
        split.train_period,
        negatives=max((c.negatives for c in grid if c.method == "softmax"), default=0),
        seed=seed,
        max_rank=max((c.target_rank for c in grid if c.method == "lsq"), default=1),
    )
    evidence_seconds = time.perf_counter() - t0
    rows, fits = tune(model, evidence, split, grid, known_sample=known_sample, seed=seed)
    test, methods = _test_choices(model, split, grid, rows, fits)
    # The default: the method whose choice is best on all validation events.
    chosen = max(methods, key=lambda m: methods[m]["chosen"][f"valid_all_ndcg@{K}"])
    config = best(grid, rows, f"valid_all_ndcg@{K}", chosen)
    test["bundle"] = service_ranks(model, split)
    popular = popularity_ranks(split.train_period, catalog, split.test)
    fold_held, fold_known, _ = test[chosen]
    bundle_held, bundle_known, _ = test["bundle"]
    return {
        **counts(split, evidence, fits[config]),
        "chosen": {**setting(config), "on": f"valid_all_ndcg@{K}"},
        "methods": methods,
        **summary(fold_held, seed=seed),
        **summary(popular, prefix="popularity_", seed=seed),
        **summary(bundle_held, prefix="bundle_", seed=seed),
        f"foldin_vs_popularity_ndcg@{K}": _paired(popular, fold_held, seed),
        "by_events": {
            name: {**by_events(held, known, seed=seed), "new_item_slot_share": share}
            for name, (held, known, share) in test.items()
        },
        f"foldin_vs_bundle_all_ndcg@{K}": _paired(
            np.concatenate([bundle_held, bundle_known]),
            np.concatenate([fold_held, fold_known]),
            seed,
        ),
        "grid": rows,
        "evidence_seconds": round(evidence_seconds, 2),
        **_softmax_vs_lsq(test, seed),
    }


def counts(split: HeldOutSplit, evidence: Evidence, result: FoldIn) -> dict[str, Any]:
    with_vector = set(result.item_ids)
    new_items = set(evidence.occurrences.new_items)  # also a few only dropped users had
    return {
        "held_out_items": len(split.held_out),
        "held_out_items_in_training_period": len(new_items & split.held_out),
        "held_out_items_with_vector": len(with_vector & split.held_out),
        "other_items_with_vector": len(with_vector - split.held_out),
        "usable_occurrences": len(evidence.occurrences.owner),
        "negative_positions": len(evidence.negatives),
        "negative_weight": evidence.negative_weight,
        "valid_events": len(split.valid),
        "valid_known_events": len(split.valid_known),
        "test_events": len(split.test),
        "test_known_events": len(split.test_known),
        "test_events_with_vector": sum(t in with_vector for t in split.test.targets),
    }


# --- command line ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.foldin", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", required=True, type=Path, help="interactions (txt, csv, ratings.dat)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/catalog-foldin.json"))
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/foldin"))
    p.add_argument("--held-out", type=float, default=0.1, help="share of the items held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5, help="training epochs of the bundle")
    p.add_argument("--recipe", default="beauty", help="benchmarks.compress recipe of the shape")
    p.add_argument("--ridges", type=float, nargs="+", default=list(RIDGES))
    p.add_argument("--target-ranks", type=int, nargs="+", default=list(TARGET_RANKS))
    p.add_argument("--l2s", type=float, nargs="+", default=list(L2S), help="softmax's l2 grid")
    p.add_argument(
        "--negatives",
        type=int,
        default=FoldInConfig.negatives,
        help="positions with a known next item sampled as softmax negatives",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument(
        "--known-sample",
        type=int,
        default=KNOWN_SAMPLE,
        help="validation events with known targets answered per setting",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"no such data file: {args.data}")
    if not 0 < args.held_out < 1:
        parser.error("--held-out must lie in (0, 1)")
    return args


def _train(
    args: argparse.Namespace, split: HeldOutSplit, user_ids: Sequence[str]
) -> tuple[dict[str, Any], float]:
    """The bundle trained on the data without the held-out items (reused when its settings
    match), and the seconds that took."""
    reduced = args.work / "reduced.txt"
    write_interactions(reduced, user_ids, split.reduced)
    settings = {
        "data_sha256": sha256_file(args.data),
        "held_out": args.held_out,
        "seed": args.seed,
        "epochs": args.epochs,
        "recipe": args.recipe,
    }
    overrides = {
        "student_epochs": args.epochs,
        "seed": args.seed,
        "version": BUNDLE_VERSION,
        "progress": args.progress,
    }
    config = build_config(
        data=str(reduced), work=args.work, recipe=args.recipe, overrides=overrides
    )
    log(f"{len(split.held_out):,} items held out; training the bundle on the rest")
    t0 = time.perf_counter()
    trained = bundle_for(config, args.work / BUNDLE_VERSION, settings)
    return trained, time.perf_counter() - t0


def _grid(args: argparse.Namespace) -> list[FoldInConfig]:
    return configs(
        ridges=args.ridges if "lsq" in args.methods else [],
        target_ranks=args.target_ranks,
        l2s=args.l2s if "softmax" in args.methods else [],
        negatives=args.negatives,
    )


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    # the code that runs is the code at the start
    provenance = {**run_provenance("benchmarks.foldin", argv), "python": platform.python_version()}
    data = read_interactions(args.data, min_interactions=3)
    sequences = [[data.vocab[i] for i in s] for s in data.sequences]
    split = hold_out(sequences, share=args.held_out, seed=args.seed)
    trained, bundle_seconds = _train(args, split, data.user_ids)
    log("folding in and answering through the service")
    t0 = time.perf_counter()
    measured = measure(
        args.work / BUNDLE_VERSION,
        split,
        data.vocab,
        grid=_grid(args),
        known_sample=args.known_sample,
        seed=args.seed,
    )
    timings = {
        "bundle": round(bundle_seconds, 2),
        "evidence": measured["evidence_seconds"],
        "measure": round(time.perf_counter() - t0, 2),
    }
    results = {
        "dataset": args.data.stem,
        "data": str(args.data),
        **provenance,
        "protocol": __doc__.split("Protocol:")[1].split("Writes the JSON")[0].strip(),
        "held_out_share": args.held_out,
        "seed": args.seed,
        "items": data.n_items,
        "users": data.n_users,
        "k": K,
        **measured,
        "bundle": trained,
        "timings_s": timings,
        "wall_seconds": round(time.perf_counter() - t_start, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = render_markdown(results)
    args.out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
