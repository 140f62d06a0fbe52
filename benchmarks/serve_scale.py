"""Larger catalogs at one offered load: latency and the server's resident memory.

    entries = parse_scale(["1M=benchmarks/work/catalog-1m:0.97"])   # (label, dir, recall@10)
    rows = run_scale(entries, offered_rps=1000, opts=opts, histories=..., workload_config=...)

Without `--scale`, `default_scale_entries` serves the shipped catalog and the same catalog
grown to a million items (`benchmarks.catalog.grow_bundle`), each with the recall@10 of the
service's answers against exact scoring, measured on real histories.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

from benchmarks.harness.log import logger
from benchmarks.serve_variants import (
    SHIPPED_BATCH,
    LoadOptions,
    Variant,
    level_runner,
    start_server,
    warm_up,
)
from benchmarks.workload import WorkloadConfig, build_workload, read_vocab

ScaleEntry = tuple[str, Path, float | None]  # (label, bundle directory, recall@10 or None)
ScaleRow = TypedDict(
    "ScaleRow",
    {
        "label": str,
        "bundle": str,
        "items": int,
        "dim": int,
        "item_encoding": str,
        "histories": int,
        "offered_rps": float,
        "rps": float | None,
        "p50_ms": float | None,
        "p99_ms": float | None,
        "failures": float,
        "recall@10": float | None,
        "rss_mb": float | None,
        "rss_idle_mb": float | None,
        "env": dict[str, str],
    },
)

log = logger("bench-serve")


def _safe(label: str) -> str:
    """`label` as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _scale_one(
    entry: ScaleEntry,
    *,
    offered_rps: float,
    opts: LoadOptions,
    histories: list[list[str]] | None,
    workload_config: WorkloadConfig,
    env: dict[str, str],
) -> ScaleRow:
    label, bundle_dir, recall = entry
    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    vocab = read_vocab(bundle_dir / "vocab.json")
    known = set(vocab)
    hist = None
    if histories is not None:
        hist = [kept for h in histories if (kept := [i for i in h if i in known])]
    workload = build_workload(vocab, hist, workload_config, source="data")
    name = f"scale-{_safe(label)}"
    wpath = workload.save(opts.run_dir / name / "workload.json")
    variant = Variant(name, f"scale: {label}", "service.main:create_app", bundle_dir, env=env)
    log(f"scale {label}: {manifest['n_items']} items at {offered_rps:g} rps")
    with start_server(
        variant, opts.run_dir, cpu=opts.server_cpu, ready_timeout_s=opts.ready_timeout_s
    ) as server:
        rss_idle = server.rss_mb()
        warm_up(server, variant.path, workload, opts.warmup)
        level = level_runner(server, variant, wpath, opts, "scale")(offered_rps)
        rss = server.rss_mb()
    return {
        "label": label,
        "bundle": str(bundle_dir),
        "items": int(manifest["n_items"]),
        "dim": int(manifest["dim"]),
        "item_encoding": manifest["item_encoding"],
        "histories": workload.meta["histories"],
        "offered_rps": level["offered_rps"],
        "rps": level["rps"],
        "p50_ms": level["p50_ms"],
        "p99_ms": level["p99_ms"],
        "failures": level["failures"],
        "recall@10": recall,
        "rss_mb": rss,
        "rss_idle_mb": rss_idle,
        "env": variant.env,
    }


def run_scale(
    entries: Sequence[ScaleEntry],
    *,
    offered_rps: float,
    opts: LoadOptions,
    histories: list[list[str]] | None,
    workload_config: WorkloadConfig,
    batch_max_size: int = SHIPPED_BATCH,
    extra_env: dict[str, str] | None = None,
) -> list[ScaleRow]:
    """Serve each bundle like `shipped` (the real service, micro-batching on) at one offered
    load; latency, and the server's resident memory (VmRSS) after it.

    `recall` is reported as given (recall@10 of that bundle's search against exact search, as
    measured by whoever made it); None when not known. Histories come from the data when
    enough of them are in the bundle's catalog, else from its vocabulary. `extra_env` goes to
    every scale server (e.g. {"ANN_NPROBE": "32"})."""
    env = {"BATCH_MAX_SIZE": str(batch_max_size), **(extra_env or {})}
    return [
        _scale_one(
            entry,
            offered_rps=offered_rps,
            opts=opts,
            histories=histories,
            workload_config=workload_config,
            env=env,
        )
        for entry in entries
    ]


def default_scale_entries(
    shipped: Path,
    run_dir: Path,
    histories: list[list[str]],
    *,
    grow_to: int,
    seed: int,
    env: dict[str, str] | None = None,
) -> list[ScaleEntry]:
    """The shipped catalog, and (grow_to > 0) the same catalog grown to `grow_to` items, each
    with the recall@10 of the service's answers against exact scoring, measured here on real
    histories (`benchmarks.catalog.serving_recall`)."""
    from benchmarks.catalog import grow_bundle, serving_recall

    if not histories:  # no data file: histories from the catalog itself
        vocab = read_vocab(shipped / "vocab.json")[1:]
        rng = np.random.default_rng(seed)
        histories = [list(rng.choice(vocab, size=8)) for _ in range(1000)]
    bundles = [("shipped", shipped)]
    if grow_to > 0:
        log(f"growing {shipped} to {grow_to:,} items")
        grown = grow_bundle(shipped, run_dir / f"catalog-{grow_to}", grow_to, noise=0.3, seed=seed)
        bundles.append((f"grown to {grow_to:,}", grown))
    out: list[ScaleEntry] = []
    for name, path in bundles:
        measured = serving_recall(path, histories, seed=seed, env=env)
        n_items = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["n_items"]
        log(f"{name}: {n_items:,} items, {measured['search']}, recall@10 {measured['recall@10']}")
        out.append(
            (f"{name} ({n_items:,} items, {measured['search']})", path, measured["recall@10"])
        )
    return out


def parse_scale(items: Sequence[str]) -> list[ScaleEntry]:
    """`LABEL=BUNDLE_DIR[:RECALL]` -> (label, dir, recall)."""
    out = []
    for item in items:
        label, sep, rest = item.partition("=")
        if not sep or not label:
            raise ValueError(f"--scale takes LABEL=BUNDLE_DIR[:RECALL], not {item!r}")
        path, recall = rest, None
        head, colon, tail = rest.rpartition(":")
        if colon:
            try:
                recall = float(tail)
                path = head
            except ValueError:
                pass
        if not (Path(path) / "manifest.json").is_file():
            raise ValueError(f"--scale {label}: {path} is not a bundle directory")
        out.append((label, Path(path), recall))
    return out
