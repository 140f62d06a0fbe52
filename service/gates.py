"""The optional promotion gates: a candidate must be about as accurate as the serving model,
and fast enough, before it may be installed or activated.

Every other gate is mandatory and lives with the format it checks, run by
`service.loading.load_model` on every install and activation:

- archive safety (absolute paths, `..`, links, devices, file count, bytes, expansion ratio):
  `bundle.archive.extract_archive`;
- sizes and sha256 of every file against the manifest, no unlisted files, plain numeric .npy
  arrays read without pickle (header checked against the file size first), shapes and
  dtypes, NaN/Inf in items / scales / golden outputs / metrics, at most 256 golden pairs,
  vocabulary (length, padding entry, no empty or duplicate IDs), popularity (shape, no
  negatives): `bundle.io.read_bundle`;
- ONNX input/output names, dtypes, ranks, dynamic batch axis: `service.encoder.OnnxEncoder`;
- golden outputs reproduced: `bundle.io.verify_golden`.

The two gates here depend on the deployment, so they are off unless configured:

- accuracy (`GATE_MAX_NDCG_DROP`, relative): the candidate's `GATE_METRIC` in its manifest
  (default `test_ndcg@10`, what `models.compress` writes for the served stage) may be lower
  than the serving version's by at most that fraction. Without a serving version, or when the
  serving manifest has no such metric, there is nothing to compare and the gate passes; a
  candidate without the metric is refused.
- latency (`GATE_MAX_LATENCY_MS`): the time of the whole request path (encoder and catalog
  scoring) for one request with a full history, at batch 1, after warm-up: the best of 7
  runs, so a busy machine (a noisy neighbour, a swap under load) does not refuse a good
  model, while a slow model cannot be fast on its best run.

Failures raise `GateFailed` (a kind of `InvalidBundle`, so the API answers 422 naming both
numbers); the serving model is never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bundle import Manifest
from service.errors import GateFailed
from service.model import LoadedModel, RecRequest

DEFAULT_METRIC = "test_ndcg@10"
LATENCY_RUNS = 7


@dataclass(frozen=True)
class GateConfig:
    """Which optional gates are on (from `Settings`); None = off."""

    metric: str = DEFAULT_METRIC
    max_metric_drop: float | None = None  # relative: 0.05 = at most 5% below the serving model
    max_latency_ms: float | None = None


def check_accuracy(
    candidate: Manifest, serving: Manifest | None, *, metric: str, max_drop: float
) -> None:
    """Refuse `candidate` when its `metric` is more than `max_drop` (relative) below `serving`'s."""
    if serving is None or metric not in serving.metrics:
        return
    if metric not in candidate.metrics:
        raise GateFailed(
            f"accuracy gate: the manifest has no metric {metric!r} to compare with the serving "
            f"version {serving.model_version!r} ({metric} = {serving.metrics[metric]:.4f})"
        )
    new, old = candidate.metrics[metric], serving.metrics[metric]
    floor = old * (1 - max_drop)
    if new < floor:
        drop = (old - new) / old if old else float("inf")
        raise GateFailed(
            f"accuracy gate: {metric} {new:.4f} of {candidate.model_version!r} is {drop:.1%} "
            f"below {old:.4f} of the serving version {serving.model_version!r}; at most "
            f"{max_drop:.1%} is allowed (GATE_MAX_NDCG_DROP)"
        )


def measure_latency_ms(model: LoadedModel, *, runs: int = LATENCY_RUNS) -> float:
    """Best-of-`runs` wall time in ms of one full-catalog request with a full history, batch 1."""
    history = model.vocab[1 : 1 + min(model.max_len, model.n_items)]
    request = RecRequest(history=history, k=min(10, model.n_items))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.recommend_batch([request])
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def check_latency(model: LoadedModel, *, max_ms: float) -> float:
    """Refuse `model` when its batch-1 latency exceeds `max_ms`; return the measured ms."""
    ms = measure_latency_ms(model)
    if ms > max_ms:
        raise GateFailed(
            f"latency gate: {model.version!r} takes {ms:.2f} ms per request at batch 1 "
            f"(encoder + scoring, best of {LATENCY_RUNS}); the limit is {max_ms:g} ms "
            "(GATE_MAX_LATENCY_MS)"
        )
    return ms


def check_gates(model: LoadedModel, *, serving: LoadedModel | None, config: GateConfig) -> None:
    """Run the optional gates that `config` turns on; raise GateFailed on the first failure."""
    if config.max_metric_drop is not None:
        check_accuracy(
            model.manifest,
            serving.manifest if serving is not None else None,
            metric=config.metric,
            max_drop=config.max_metric_drop,
        )
    if config.max_latency_ms is not None:
        check_latency(model, max_ms=config.max_latency_ms)
