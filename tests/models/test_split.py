from __future__ import annotations

import numpy as np
import pytest

from models.split import leave_one_out, pad_left


def test_leave_one_out_last_is_test_second_last_is_validation() -> None:
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([7, 8, 9])]
    split = leave_one_out(seqs)
    assert [s.tolist() for s in split.train] == [[1, 2, 3], [7]]
    assert split.valid.targets.tolist() == [4, 8]
    assert [h.tolist() for h in split.valid.histories] == [[1, 2, 3], [7]]
    assert split.test.targets.tolist() == [5, 9]
    assert [h.tolist() for h in split.test.histories] == [[1, 2, 3, 4], [7, 8]]


def test_leave_one_out_refuses_short_users() -> None:
    with pytest.raises(ValueError, match="fewer than 3"):
        leave_one_out([np.array([1, 2, 3]), np.array([1, 2])])


def test_pad_left_keeps_the_most_recent_items() -> None:
    out = pad_left([np.array([1, 2, 3, 4]), np.array([5]), np.array([], dtype=np.int64)], 3)
    assert out.dtype == np.int64
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]
    split = leave_one_out([np.array([1, 2, 3, 4, 5])])
    assert split.test.inputs(max_len=6).tolist() == [[0, 0, 1, 2, 3, 4]]
