"""Leave-one-out split: per user, last item = test, second-to-last = validation, rest = train.

from models.split import leave_one_out
split = leave_one_out(data.sequences)
split.valid.inputs(max_len=50)   # int64 (U, 50), left-padded with 0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def pad_left(histories: Sequence[IntArray], max_len: int) -> IntArray:
    """Keep each history's last `max_len` items, left-pad with 0: (U, max_len) int64."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = h[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out


@dataclass
class EvalSet:
    """Per user: the full history seen before the target, and the target item index."""

    histories: list[IntArray]
    targets: IntArray  # (U,)

    def __len__(self) -> int:
        return len(self.targets)

    def inputs(self, *, max_len: int) -> IntArray:
        return pad_left(self.histories, max_len)


@dataclass
class Split:
    train: list[IntArray]  # seq[:-2] per user
    valid: EvalSet  # history seq[:-2], target seq[-2]
    test: EvalSet  # history seq[:-1], target seq[-1]


def leave_one_out(sequences: Sequence[IntArray]) -> Split:
    """Split every user's sequence; each needs at least 3 items (see `min_interactions`)."""
    short = [i for i, s in enumerate(sequences) if len(s) < 3]
    if short:
        raise ValueError(
            f"{len(short)} users have fewer than 3 interactions (first: user #{short[0]}); "
            "read with min_interactions >= 3"
        )
    train = [np.asarray(s[:-2], dtype=np.int64) for s in sequences]
    valid = EvalSet(train, np.array([s[-2] for s in sequences], dtype=np.int64))
    test = EvalSet(
        [np.asarray(s[:-1], dtype=np.int64) for s in sequences],
        np.array([s[-1] for s in sequences], dtype=np.int64),
    )
    return Split(train=train, valid=valid, test=test)
