"""Full-catalog top 10 from int8 rows against top 10 from 4-bit PQ codes, as the service scores.

    make bench-scoring          # = taskset -c 1 python -m benchmarks.scoring

A catalog of the Beauty student's shape (54,542 items + padding, d = 64) with random values:
int8 rows with per-row scales scored by `service.scorer.Scorer` (the int8 path, fused
kernel from 12 rows on), and a pq4 table of M = 8, 16 and 32 subspaces scored by
`service.code_scorer.CodeScorer` (fast scan, certified exact rerank). Every scorer gets the
same 32 users, each with a 9-item history to exclude (Beauty's average), k = 10, one thread;
the scorers are timed in turn over several rounds and keep their medians, so the ratios
compare times taken side by side. Bytes are the table each needs in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import cpu_model
from bundle import PQTable, encode_items
from service.code_scorer import CodeScorer
from service.scorer import CatalogScorer, Scorer

ROWS = 54_543
DIM = 64
ROUNDS = 5


def scorers(rng: np.random.Generator) -> dict[str, tuple[CatalogScorer, int]]:
    dense = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    stored, scales = encode_items(dense, "int8")
    assert scales is not None
    out: dict[str, tuple[CatalogScorer, int]] = {
        "int8 rows": (Scorer(stored, scales), stored.nbytes + scales.nbytes)
    }
    for m in (8, 16, 32):
        codebooks = rng.standard_normal((m, 16, DIM // m)).astype(np.float32)
        table = PQTable.from_codes(rng.integers(0, 16, size=(ROWS, m)), codebooks)
        out[f"pq4 M={m}"] = (CodeScorer(table), table.nbytes)
    return out


def per_row_us(call: Callable[[], Any], rows: int, budget_s: float = 0.3) -> float:
    call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6 / rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    users = rng.standard_normal((32, DIM)).astype(np.float32)
    banned = [rng.integers(1, ROWS, size=9) for _ in range(32)]
    table = scorers(rng)
    seen: dict[str, dict[str, list[float]]] = {n: {"b1": [], "b32": []} for n in table}
    for _ in range(ROUNDS):
        for name, (scorer, _) in table.items():
            for batch in (1, 32):
                call = lambda b=batch, s=scorer: s.top_k(users[:b], banned[:b], 10)  # noqa: E731
                seen[name][f"b{batch}"].append(per_row_us(call, batch))
    report = {
        "cpu": cpu_model(),
        "cores": sorted(os.sched_getaffinity(0)),
        "rows": ROWS,
        "dim": DIM,
        "rounds": ROUNDS,
        "scorers": {
            name: {
                "table_bytes": nbytes,
                "bytes_per_item": round(nbytes / ROWS, 2),
                "top10_us_b1": float(np.median(seen[name]["b1"])),
                "top10_us_per_row_b32": float(np.median(seen[name]["b32"])),
            }
            for name, (_, nbytes) in table.items()
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
