from __future__ import annotations

import numpy as np
import pytest

from models.pq import balanced_order, train_pq


def _sorted_variance_table(rows: int = 3000, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Rows whose channels have geometrically falling spread, like a PCA-started student."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(rows, dim)) * (0.7 ** np.arange(dim))
    table[0] = 0  # the padding row
    return table.astype(np.float32)


def test_balanced_order_is_a_permutation_that_spreads_the_variance() -> None:
    table = _sorted_variance_table()
    order = balanced_order(table, m=4).numpy()
    assert sorted(order.tolist()) == list(range(16))
    log_var = np.log(table[1:, order].var(axis=0)).reshape(4, 4).sum(axis=1)
    natural = np.log(table[1:].var(axis=0)).reshape(4, 4).sum(axis=1)
    assert np.ptp(log_var) < 0.25 * np.ptp(natural)


def test_balanced_order_lowers_the_quantization_error() -> None:
    table = _sorted_variance_table()
    order = balanced_order(table, m=4).numpy()

    def error(matrix: np.ndarray) -> float:
        return float(((train_pq(matrix, m=4).decode() - matrix)[1:] ** 2).sum())

    assert error(table[:, order]) < 0.8 * error(table)


def test_balanced_order_needs_m_to_divide_the_dimension() -> None:
    with pytest.raises(ValueError, match="divide"):
        balanced_order(_sorted_variance_table(dim=10), m=4)
