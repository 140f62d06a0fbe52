"""The statistics the compression benchmark reports, against hand-computed and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.stats import MISS, Metric, bootstrap_ci, gains, paired_test, seed_summary

RANKS = np.array([0, 1, 9, 10, MISS])


def _num(out: dict[str, float | list[float]], key: str) -> float:
    value = out[key]
    assert isinstance(value, float | int)
    return float(value)


def _ci(out: dict[str, float | list[float]]) -> tuple[float, float]:
    value = out["ci95"]
    assert isinstance(value, list)
    lo, hi = value
    return lo, hi


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("ndcg", [1.0, 1.0 / math.log2(3), 1.0 / math.log2(11), 0.0, 0.0]),
        ("hr", [1.0, 1.0, 1.0, 0.0, 0.0]),
        ("mrr", [1.0, 0.5, 0.1, 0.0, 0.0]),
    ],
)
def test_gains_match_hand_computed_values_at_k10(metric: Metric, expected: list[float]) -> None:
    got = gains(RANKS, k=10, metric=metric)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_gains_default_is_ndcg_at_10() -> None:
    np.testing.assert_array_equal(gains(RANKS), gains(RANKS, k=10, metric="ndcg"))


def test_gains_treat_any_negative_rank_as_a_miss() -> None:
    np.testing.assert_array_equal(gains(np.array([-5, -1]), metric="mrr"), [0.0, 0.0])


def test_gains_reject_k_below_one_and_unknown_metric() -> None:
    with pytest.raises(ValueError, match="k must be"):
        gains(RANKS, k=0)
    with pytest.raises(ValueError, match="unknown metric"):
        gains(RANKS, metric="map")  # type: ignore[arg-type]


def test_bootstrap_interval_of_normal_sample_has_textbook_width_around_the_mean() -> None:
    n = 20_000
    x = np.random.default_rng(1).normal(0.0, 1.0, size=n)
    lo, hi = bootstrap_ci(x, seed=0)
    assert lo < float(x.mean()) < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.10)


def test_bootstrap_interval_is_deterministic_for_a_seed_and_moves_with_another() -> None:
    x = np.random.default_rng(2).exponential(size=2_000)
    first = bootstrap_ci(x, n_resamples=500, seed=7)
    assert bootstrap_ci(x, n_resamples=500, seed=7) == first
    assert bootstrap_ci(x, n_resamples=500, seed=8) != first


def test_bootstrap_interval_of_constant_values_is_that_constant() -> None:
    assert bootstrap_ci(np.full(300, 0.25), n_resamples=200) == (0.25, 0.25)


def test_bootstrap_interval_narrows_with_a_lower_level() -> None:
    x = np.random.default_rng(3).normal(size=1_000)
    lo95, hi95 = bootstrap_ci(x, n_resamples=500)
    lo50, hi50 = bootstrap_ci(x, n_resamples=500, level=0.5)
    assert lo95 < lo50 < hi50 < hi95


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1])
def test_bootstrap_rejects_level_outside_open_unit_interval(level: float) -> None:
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(np.ones(10), level=level)


def test_bootstrap_rejects_empty_input_and_no_resamples() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.ones(10), n_resamples=0)


def test_paired_test_detects_a_small_constant_shift() -> None:
    a = gains(np.random.default_rng(4).integers(-1, 30, size=5_000))
    b = a + 0.002
    out = paired_test(a, b, n_resamples=1_000)
    assert _num(out, "p_value") < 0.01
    lo, hi = _ci(out)
    assert 0.0 < lo <= hi
    assert out["diff"] == pytest.approx(0.002)
    assert out["mean_b"] == pytest.approx(float(a.mean()) + 0.002)
    assert out["relative"] == pytest.approx(0.002 / float(a.mean()))
    assert out["n_users"] == 5_000


def test_paired_test_finds_nothing_in_mean_zero_symmetric_noise() -> None:
    rng = np.random.default_rng(5)
    a = gains(rng.integers(-1, 30, size=5_000))
    b = a + rng.normal(0.0, 0.05, size=a.size)
    out = paired_test(a, b, n_resamples=1_000)
    assert _num(out, "p_value") > 0.05
    lo, hi = _ci(out)
    assert lo < 0.0 < hi


def test_paired_test_of_identical_inputs_has_zero_diff_and_p_one() -> None:
    a = gains(np.random.default_rng(6).integers(-1, 30, size=1_000))
    out = paired_test(a, a.copy(), n_resamples=500)
    assert out["diff"] == 0.0
    assert out["relative"] == 0.0
    assert out["p_value"] == 1.0
    assert out["ci95"] == [0.0, 0.0]


def test_paired_test_p_value_matches_exact_sign_flip_distribution() -> None:
    # Two users who both gain 1: of the four sign patterns, two reach |mean| >= 1.
    out = paired_test(np.zeros(2), np.ones(2), n_resamples=2_000)
    assert out["p_value"] == pytest.approx(0.5, abs=0.05)


def test_paired_test_relative_is_nan_when_baseline_is_zero() -> None:
    out = paired_test(np.zeros(3), np.ones(3), n_resamples=10)
    assert math.isnan(_num(out, "relative"))


def test_paired_test_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.random(500), rng.random(500)
    assert paired_test(a, b, n_resamples=200, seed=3) == paired_test(a, b, n_resamples=200, seed=3)


def test_paired_test_rejects_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="same users"):
        paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="non-empty"):
        paired_test(np.array([]), np.array([]))


def test_seed_summary_matches_numpy_mean_and_sample_sd() -> None:
    values = [0.030, 0.032, 0.035]
    out = seed_summary(values)
    assert out["mean"] == pytest.approx(float(np.mean(values)))
    assert out["sd"] == pytest.approx(float(np.std(values, ddof=1)))
    assert out["n"] == 3
    assert out["values"] == values


def test_seed_summary_of_one_value_has_no_sd() -> None:
    assert seed_summary([0.03]) == {"mean": 0.03, "sd": None, "n": 1, "values": [0.03]}


def test_seed_summary_rejects_empty() -> None:
    with pytest.raises(ValueError, match="at least one"):
        seed_summary([])
