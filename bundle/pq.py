"""Product-quantized item tables: each item is M 4-bit codes into M small learned codebooks.

Item i's vector is the concatenation over subspaces m of `codebooks[m, code(i, m)]`: with
d = 64 and M = 16, 8 bytes per item instead of 68 for int8 rows with a scale. A user's score
for an item is then the sum of M entries of a per-user lookup table (asymmetric distance
computation):

    lut[m, c] = user[m-th slice] . codebooks[m, c]        (M, K) per user
    score(i)  = sum_m lut[m, code(i, m)]                  exactly user . decode(i), up to
                                                           float summation order

Storage (the bundle's `items.npy` for item_encoding "pq4"): uint8 (rows, M / 2), two codes per
byte, code 2j in the low nibble of byte j and code 2j + 1 in the high one, the layout faiss's
4-bit product quantizer uses, so the service can hand the bytes to its SIMD scan unchanged.
`codebooks.npy`: float32 (M, K, dim / M) with K <= 16 centroids per subspace; a code >= K
points at no centroid and is refused when the bundle is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleError

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

PQ_BITS = 4
PQ_MAX_CENTROIDS = 1 << PQ_BITS  # 16


def pack_codes(codes: npt.NDArray[np.integer]) -> U8:
    """(rows, M) codes in [0, 16) -> (rows, M / 2) bytes, two codes per byte (low nibble first)."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[1] % 2:
        raise ValueError(f"codes must be (rows, M) with M even, got shape {c.shape}")
    if c.size and (c.min() < 0 or c.max() >= PQ_MAX_CENTROIDS):
        raise ValueError(f"4-bit codes must lie in [0, {PQ_MAX_CENTROIDS})")
    c = c.astype(np.uint8)
    packed: U8 = c[:, 0::2] | (c[:, 1::2] << 4)
    return packed


def unpack_codes(packed: U8) -> U8:
    """(rows, M / 2) bytes -> (rows, M) codes."""
    out = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


@dataclass(frozen=True)
class PQTable:
    """An item table as packed 4-bit codes and their codebooks (see the module docstring)."""

    packed: U8  # (rows, M / 2)
    codebooks: F32  # (M, K, dim / M), K <= 16

    @classmethod
    def from_codes(
        cls, codes: npt.NDArray[np.integer], codebooks: npt.NDArray[np.floating]
    ) -> PQTable:
        table = cls(pack_codes(codes), np.ascontiguousarray(codebooks, dtype=np.float32))
        table.check()
        return table

    @property
    def rows(self) -> int:
        return int(self.packed.shape[0])

    @property
    def m(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def centroids(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def dim(self) -> int:
        return int(self.codebooks.shape[0] * self.codebooks.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.codebooks.nbytes)

    def check(self, *, codes_file: str = "codes", codebooks_file: str = "codebooks") -> None:
        """Raise BundleError naming what is wrong: shapes, dtypes, non-finite centroids, or a
        code that points past its codebook."""
        p, cb = self.packed, self.codebooks
        if cb.dtype != np.float32 or cb.ndim != 3 or 0 in cb.shape:
            raise BundleError(
                f"{codebooks_file} must be float32 (M, K, dim / M), got {cb.dtype} {cb.shape}"
            )
        if cb.shape[1] > PQ_MAX_CENTROIDS:
            raise BundleError(
                f"{codebooks_file} has {cb.shape[1]} centroids per subspace; 4-bit codes "
                f"address at most {PQ_MAX_CENTROIDS}"
            )
        if not np.isfinite(cb).all():
            raise BundleError(f"{codebooks_file} contains NaN or Inf")
        if p.dtype != np.uint8 or p.ndim != 2 or p.shape[1] * 2 != cb.shape[0]:
            raise BundleError(
                f"{codes_file} must be uint8 (rows, M / 2) = (rows, {cb.shape[0] // 2}) for "
                f"{cb.shape[0]} subspaces, got {p.dtype} {p.shape}"
            )
        if cb.shape[1] < PQ_MAX_CENTROIDS and p.size:
            high = int(max((p & 0x0F).max(), (p >> 4).max()))
            if high >= cb.shape[1]:
                raise BundleError(
                    f"{codes_file} holds code {high}, but {codebooks_file} has only "
                    f"{cb.shape[1]} centroids per subspace (codes 0..{cb.shape[1] - 1})"
                )

    def codes(self) -> U8:
        return unpack_codes(self.packed)

    def decode(self, rows: npt.NDArray[np.integer] | None = None) -> F32:
        """The float vectors of `rows` (all when None): (n, dim). Builds a dense copy: for
        tests, evaluation and small row sets, never for scoring the catalog."""
        codes = unpack_codes(self.packed if rows is None else self.packed[rows])
        parts = self.codebooks[np.arange(self.m)[None, :], codes]  # (n, M, dim / M)
        out: F32 = parts.reshape(len(codes), self.dim)
        return out

    def lookup_tables(self, users: F32) -> F32:
        """(B, dim) users -> (B, M, K) inner products of each user slice with each centroid.
        Each entry is summed over the slice's dimensions one at a time, in the same order
        whatever B is (a BLAS product may order its sums by batch size), so a user's scores
        do not depend on its batch."""
        sliced = np.asarray(users, dtype=np.float32).reshape(len(users), self.m, -1, 1)
        by_dim = self.codebooks.transpose(2, 0, 1)  # (dim / M, M, K)
        luts: F32 = sliced[:, :, 0] * by_dim[0]
        for j in range(1, len(by_dim)):
            luts += sliced[:, :, j] * by_dim[j]
        return luts

    def scores(self, luts: F32, rows: npt.NDArray[np.integer]) -> F32:
        """Scores of user b for its own rows: (B, M, K) tables, (B, n) rows -> (B, n)."""
        codes = unpack_codes(self.packed[rows.ravel()]).reshape(*rows.shape, self.m)
        user = np.arange(len(rows))[:, None, None]
        out: F32 = luts[user, np.arange(self.m)[None, None, :], codes].sum(axis=2, dtype=np.float32)
        return out
