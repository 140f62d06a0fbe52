"""The model's share of a request: CPU time per request of the served request path, by batch.

    make bench-model-cost [DATA=../shared/data/amazon-beauty.txt]
    # = taskset -c 1 python -m benchmarks.model_cost --data ... --out benchmarks/results/model-cost.json

Loads a bundle through the service's own loader (`service.loading.load_model`; default: the
speed-only Beauty bundle that `make bench-serve` serves, built if missing) and times, on one
core and in CPU seconds (`time.process_time`, so other processes on the machine matter less
than to wall time), `LoadedModel.recommend_batch` over the serving benchmark's request mix
(70% full catalog, 30% rerank, real users' histories) at batch sizes 1 to 64, and its two
onnxruntime parts alone: the encoder on the batch's histories and the full-catalog top k.
At the batch sizes a loaded server forms (`COLD_BATCHES`) each is timed twice: warm (the
batches in turn, their data left in the caches by the rounds before) and cold (the caches
evicted before every call, as if a server's HTTP work had run in between). A served request
pays somewhere between the two.

What it answers: how much of a served request is model work at each batch size, and how
much is left at the largest batches, the floor that batching cannot remove. `make
bench-serve` measures the HTTP stack's own cost per request (its ceiling app); the two
together bound what the service can reach on one core.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks.provenance import cpu_caches, cpu_model, git
from benchmarks.workload import WorkloadConfig, build_workload, histories_from_data, read_vocab
from service.loading import load_model
from service.model import LoadedModel, RecRequest, length_groups

BATCHES = (1, 2, 4, 8, 16, 32, 64)
COLD_BATCHES = (8, 16, 32, 64)  # what a server forms near its maximum
# Bytes read to evict the caches: twice the last-level cache, within these bounds (a VM may
# report its host's whole L3; past 256 MiB each eviction costs more than the call it precedes).
EVICT_MIN, EVICT_MAX = 64 << 20, 256 << 20
REQUESTS = 1024  # split into consecutive batches of each size
RERANK_SHARE = 0.3  # the serving benchmark's mix
DEFAULT_DATA = Path("../shared/data/amazon-beauty.txt")
DEFAULT_BUNDLE = Path("benchmarks/work/speed-only/amazon-beauty")


@dataclass(frozen=True)
class Row:
    batch: int
    request_us: float  # recommend_batch, per request
    encoder_us: float  # the encoder calls of the batch's histories, per request
    top_k_us: float  # the one full-catalog top-k call of the batch (its full-catalog rows)
    # The same three with the caches evicted before every call (None: not a COLD_BATCHES size)
    cold_request_us: float | None = None
    cold_encoder_us: float | None = None
    cold_top_k_us: float | None = None


def requests_from(bundle: Path, data: Path, n: int, seed: int = 0) -> list[RecRequest]:
    vocab = read_vocab(bundle / "vocab.json")
    histories = histories_from_data(data, vocab=vocab) if data.is_file() else None
    workload = build_workload(vocab, histories, WorkloadConfig(seed=seed), source=str(data))
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pool = workload.rerank if rng.random() < RERANK_SHARE else workload.full
        body = orjson.loads(rng.choice(pool))
        out.append(
            RecRequest(history=body["history"], k=body["k"], candidates=body.get("candidates"))
        )
    return out


def cpu_us(fn: Callable[[], object], reps: int) -> float:
    """Median CPU microseconds of `fn` over `reps` rounds (one warm-up call first): the same
    call repeated, so its data is warm in the caches (the encoder's cost model)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times)) * 1e6


def encoder_call(model: LoadedModel, batch: Sequence[RecRequest]) -> Callable[[], object]:
    """The encoder calls `recommend_batch` makes for `batch` (same length groups and padding)."""
    index = {v: i for i, v in enumerate(model.vocab)}
    known = [[index[v] for v in r.history if v in index][-model.max_len :] for r in batch]
    known = [k for k in known if k]
    lengths = [len(k) for k in known]
    seqs = []
    for group in length_groups(lengths):
        width = max(lengths[r] for r in group)
        seqs.append(np.array([[0] * (width - lengths[r]) + known[r] for r in group], np.int64))
    return lambda: [model.encode(s) for s in seqs]


def top_k_call(model: LoadedModel, batch: Sequence[RecRequest]) -> Callable[[], object]:
    full = [r for r in batch if r.candidates is None] or list(batch[:1])
    users = np.random.default_rng(0).standard_normal((len(full), model.manifest.dim))
    banned: list[list[int]] = [[] for _ in full]
    scorer = model.scorer
    return lambda: scorer.top_k(users.astype(np.float32), banned, 10)


def in_turn_us(calls: Sequence[Callable[[], object]], reps: int) -> float:
    """CPU microseconds of the `calls` made one after the other (each once), the median of
    `reps` rounds: like a server's consecutive batches, no call finds its own data in the
    caches from a repeat of itself."""
    for call in calls:
        call()
    rounds = []
    for _ in range(reps):
        t0 = time.process_time()
        for call in calls:
            call()
        rounds.append(time.process_time() - t0)
    return float(np.median(rounds)) * 1e6


def evict_bytes(caches: dict[str, str]) -> int:
    """How many bytes `cold_us` reads to evict the caches: twice the L3 sysfs reports."""
    l3 = caches.get("L3", "")
    size = int(l3[:-1]) << 10 if l3.endswith("K") and l3[:-1].isdigit() else 0
    return min(max(2 * size, EVICT_MIN), EVICT_MAX)


def cold_us(calls: Sequence[Callable[[], object]], reps: int, evict: np.ndarray) -> float:
    """Like `in_turn_us`, but every call starts after reading `evict` (more bytes than the
    caches hold), which is not timed: each call finds none of its data in the caches."""
    rounds = []
    for _ in range(reps):
        total = 0.0
        for call in calls:
            evict.sum()
            t0 = time.process_time()
            call()
            total += time.process_time() - t0
        rounds.append(total)
    return float(np.median(rounds)) * 1e6


def measure(
    model: LoadedModel,
    requests: Sequence[RecRequest],
    batch: int,
    reps: int,
    evict: np.ndarray | None = None,
) -> Row:
    """Per-request CPU time at `batch`, over consecutive distinct batches of `requests`;
    with `evict`, cold as well."""
    slices = [requests[i : i + batch] for i in range(0, len(requests) - batch + 1, batch)]
    n = len(slices) * batch
    kinds: list[list[Callable[[], object]]] = [
        [functools.partial(model.recommend_batch, s) for s in slices],
        [encoder_call(model, s) for s in slices],
        [top_k_call(model, s) for s in slices],
    ]
    warm = [round(in_turn_us(calls, reps) / n, 1) for calls in kinds]
    if evict is None:
        return Row(batch, *warm)
    cold = [round(cold_us(calls, reps, evict) / n, 1) for calls in kinds]
    return Row(batch, *warm, *cold)


def encoder_call_cost(model: LoadedModel, reps: int) -> dict[str, float]:
    """The encoder's cost as `fixed + per_position * rows * width`, fitted by least squares
    over a grid of batch shapes: what one more call costs, in padded positions
    (`service.model.CALL_COST_POSITIONS` is chosen from this)."""
    shapes = [(b, w) for b in (1, 4, 16, 32) for w in (5, 15, 30, 50) if w <= model.max_len]
    times = []
    for b, w in shapes:
        seqs = np.ones((b, w), dtype=np.int64)
        times.append(cpu_us(functools.partial(model.encode, seqs), reps))
    design = np.array([[1.0, b * w] for b, w in shapes])
    (fixed, per_position), *_ = np.linalg.lstsq(design, np.array(times), rcond=None)
    return {
        "fixed_us": round(float(fixed), 1),
        "per_position_us": round(float(per_position), 3),
        "call_cost_positions": round(float(fixed / per_position), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model-cost.json"))
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        from benchmarks.serve_bundles import speed_only_bundle

        speed_only_bundle(args.data, args.bundle)
    model = load_model(args.bundle)
    requests = requests_from(args.bundle, args.data, n=REQUESTS)
    evict = np.ones(evict_bytes(cpu_caches()) // 8)
    rows = [
        measure(model, requests, b, args.reps, evict if b in COLD_BATCHES else None)
        for b in BATCHES
    ]
    call_cost = encoder_call_cost(model, args.reps)
    print("CPU time per request, one core, warm (cold: caches evicted before every call)")
    print("batch  request_us  encoder_us  top_k_us   cold: request_us  encoder_us  top_k_us")
    for r in rows:
        cold = [r.cold_request_us, r.cold_encoder_us, r.cold_top_k_us]
        print(
            f"{r.batch:5d}  {r.request_us:10.1f}  {r.encoder_us:10.1f}  {r.top_k_us:8.1f}   "
            + "  ".join("-" if c is None else f"{c:10.1f}" for c in cold)
        )
    print(f"encoder call: {call_cost}")
    result = {
        "benchmark": "model_cost",
        "command": " ".join(
            [
                sys.executable.rsplit("/", 1)[-1],
                "-m",
                "benchmarks.model_cost",
                *(argv or sys.argv[1:]),
            ]
        ),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpu": cpu_model(),
        "caches": cpu_caches(),
        "evict_bytes": evict.nbytes,
        "bundle": str(args.bundle),
        "data": str(args.data),
        "rows": [asdict(r) for r in rows],
        "encoder_call": call_cost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
