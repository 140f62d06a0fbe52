"""Compact storage of the item scoring matrix.

int8 uses one symmetric scale per row: q = round(x / s), s = max|x| / 127. A user's score for
item i is then (u . q_i) * s_i, so ranking needs only an int8 (or upcast) matrix product and a
per-row multiply.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bundle.manifest import ItemEncoding

F32 = npt.NDArray[np.float32]


def encode_items(
    matrix: npt.NDArray[np.floating], encoding: ItemEncoding
) -> tuple[npt.NDArray[np.generic], F32 | None]:
    """Return (stored matrix, per-row scales or None) for `matrix` of shape (rows, dim).

    "pq4" tables are learned with the model, not encoded from a matrix: see `bundle.pq`."""
    if encoding == "pq4":
        raise ValueError("a pq4 item table is trained, not encoded: pass a bundle.pq.PQTable")
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"item matrix must be 2-D, got shape {m.shape}")
    if encoding == "fp32":
        return m, None
    if encoding == "fp16":
        return m.astype(np.float16), None
    amax = np.abs(m).max(axis=1)
    scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(m / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def decode_items(stored: npt.NDArray[np.generic], scales: F32 | None) -> F32:
    """Back to float32 (rows, dim)."""
    out = np.asarray(stored).astype(np.float32)
    if scales is not None:
        out *= scales[:, None]
    return out
