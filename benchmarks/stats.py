"""The statistics the compression benchmark reports: per-user gains, bootstrap intervals,
a paired test between two stages, and a summary over training seeds.

Conventions: ranks are 0-based positions of the target in a user's answer list, and `MISS`
(any negative rank) means the target was not in it, so it earns no gain. Every interval is a
percentile bootstrap over users, and every random draw comes from `seed`, so a report can be
rebuilt exactly. Pure numpy; nothing here reads files or models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

# The served model's evaluation only sees its top-k answer, so a target outside it has no rank.
MISS = -1

# Resamples drawn at once: 100 x 25,000 users of int64 indices is 20 MB, not 400 MB for 2,000.
_CHUNK = 100

Metric = Literal["ndcg", "hr", "mrr"]
FloatArray = npt.NDArray[np.float64]


def gains(ranks: npt.ArrayLike, k: int = 10, metric: Metric = "ndcg") -> FloatArray:
    """Per-user gain at cutoff `k` from 0-based `ranks`; a rank outside [0, k) gains 0."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    r = np.asarray(ranks)
    hit = (r >= 0) & (r < k)
    # Only hits are transformed, so MISS never reaches log2 or a division.
    pos = r[hit].astype(np.float64)
    out = np.zeros(r.shape, dtype=np.float64)
    if metric == "ndcg":
        out[hit] = 1.0 / np.log2(pos + 2.0)
    elif metric == "hr":
        out[hit] = 1.0
    elif metric == "mrr":
        out[hit] = 1.0 / (pos + 1.0)
    else:
        raise ValueError(f"unknown metric {metric!r}; expected 'ndcg', 'hr' or 'mrr'")
    return out


def _per_user(values: npt.ArrayLike, name: str) -> FloatArray:
    """`values` as a non-empty 1-D float array, one entry per user."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {v.shape}")
    return v


def _chunks(n_resamples: int) -> Iterator[int]:
    """Sizes of the resample batches; fixed, so a seed gives the same draws every run."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    for start in range(0, n_resamples, _CHUNK):
        yield min(_CHUNK, n_resamples - start)


def _bootstrap_means(v: FloatArray, n_resamples: int, rng: np.random.Generator) -> FloatArray:
    """Means of `n_resamples` resamples of `v`, users drawn with replacement."""
    means = [
        v[rng.integers(0, v.size, size=(m, v.size))].mean(axis=1) for m in _chunks(n_resamples)
    ]
    return np.concatenate(means)


def bootstrap_ci(
    values: npt.ArrayLike, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval at `level` of the mean of per-user `values`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    v = _per_user(values, "values")
    means = _bootstrap_means(v, n_resamples, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _sign_flip_p(d: FloatArray, n_resamples: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of mean(d) == 0 by flipping each user's sign at random."""
    observed = abs(float(d.mean()))
    # Relative slack so a flip that reproduces the observed mean still counts despite rounding.
    bar = observed * (1.0 - 1e-9)
    extreme = 0
    for m in _chunks(n_resamples):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, d.size))
        extreme += int(np.count_nonzero(np.abs(signs @ d) / d.size >= bar))
    return (1 + extreme) / (1 + n_resamples)


def paired_test(
    a: npt.ArrayLike, b: npt.ArrayLike, *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float | list[float]]:
    """Compare per-user gains of stage `a` and stage `b` on the same users, in the same order.

    `diff` is mean(b) - mean(a); `ci95` is a paired bootstrap over users and `p_value` a
    paired sign-flip permutation test, both of that difference.
    """
    va, vb = _per_user(a, "a"), _per_user(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"a and b must cover the same users, got shapes {va.shape} and {vb.shape}")
    d = vb - va
    mean_a, mean_b = float(va.mean()), float(vb.mean())
    diff = float(d.mean())
    # Independent streams for the two tests, both fixed by `seed`.
    boot_seq, perm_seq = np.random.SeedSequence(seed).spawn(2)
    lo, hi = np.quantile(
        _bootstrap_means(d, n_resamples, np.random.default_rng(boot_seq)), [0.025, 0.975]
    )
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": diff,
        "relative": diff / mean_a if mean_a != 0.0 else float("nan"),
        "ci95": [float(lo), float(hi)],
        "p_value": _sign_flip_p(d, n_resamples, np.random.default_rng(perm_seq)),
        "n_users": d.size,
    }


def seed_summary(values: Sequence[float]) -> dict[str, float | int | list[float] | None]:
    """Mean and sample standard deviation of one metric over training seeds."""
    if len(values) == 0:
        raise ValueError("seed_summary needs at least one value")
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size >= 2 else None,
        "n": int(v.size),
        "values": [float(x) for x in v],
    }
