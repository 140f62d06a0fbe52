"""The live item catalog: what a shop changes between model releases, layered over the items
of each bundle.

- **Availability**: item IDs no answer may contain (sold out, delisted). Keyed by item ID,
  not by version, so it holds across swaps, rollbacks, canaries and restarts; an ID that no
  model knows yet may be marked too, and is banned once a model knows it.
- **Item vectors**: per model version, vectors for items its bundle lacks (new products) or
  replaces, in that version's embedding space (`python -m models foldin` computes them for
  new items). Each is stored as one byte string, encoded the way the bundle encodes its table
  (`encode_vectors`): an int8 or int4 row after its float32 scale, 4-bit PQ codes against the
  bundle's own codebooks, or fp16/fp32 values. `LoadedModel.with_catalog` merges them over
  the bundle's table.

`CatalogLayer` is one snapshot of both, with the fleet's revision: a counter that every change
increments, so a replica knows when to re-read, and answers cached under one revision are
never served under another (`service.answer_cache`). The store keeps the layer
(`service.store`); the registry applies it to every model it serves (`service.registry`).

A new item can be recommended, but a history that names it is encoded without it: the
encoder's input embeddings are the bundle's, so it counts as an unknown history item until a
model is trained with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bundle import Manifest
from bundle.items import encode_items, unpack_int4
from bundle.pq import PQTable, pack_codes
from service.errors import InvalidCatalogChange

F32 = npt.NDArray[np.float32]

# Bytes of the per-row float32 scale that leads an int8 or int4 row.
SCALE_BYTES = 4


@dataclass(frozen=True)
class CatalogLayer:
    """Unavailable item IDs and, per model version, the stored vectors of its added or
    replaced items (item ID -> encoded row)."""

    revision: int = 0
    unavailable: frozenset[str] = frozenset()
    items: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)

    def vectors_of(self, version: str) -> Mapping[str, bytes]:
        return self.items.get(version, {})


@dataclass(frozen=True)
class Rows:
    """Decoded item rows in the form the service scores them: int8 rows (int4 ones
    unpacked) with per-row scales, packed pq4 codes, or fp16/fp32 rows without."""

    ids: tuple[str, ...]
    rows: npt.NDArray[Any]
    scales: F32 | None


def row_bytes(manifest: Manifest, pq: PQTable | None) -> int:
    """The length of one stored item vector of this bundle."""
    dim = manifest.dim
    return {
        "int8": SCALE_BYTES + dim,
        "int4": SCALE_BYTES + dim // 2,
        "fp16": 2 * dim,
        "fp32": 4 * dim,
        "pq4": (pq.m if pq is not None else 0) // 2,
    }[manifest.item_encoding]


def encode_vectors(
    manifest: Manifest, pq: PQTable | None, ids: Sequence[str], vectors: npt.NDArray[np.floating]
) -> dict[str, bytes]:
    """Float vectors (n, dim) of `ids` -> {item ID: stored row}, encoded like the bundle's
    table. Raises InvalidCatalogChange naming the first problem."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != manifest.dim:
        raise InvalidCatalogChange(
            f"vectors of {manifest.model_version!r} have {manifest.dim} values, "
            f"got shape {tuple(v.shape)}"
        )
    if len(ids) != len(v):
        raise InvalidCatalogChange(f"{len(ids)} item IDs for {len(v)} vectors")
    if len(set(ids)) != len(ids):
        raise InvalidCatalogChange("an item ID appears twice in one change")
    bad = np.flatnonzero(
        ~np.isfinite(v).all(axis=1) | (np.abs(v) > np.finfo(np.float32).max).any(axis=1)
    )
    if len(bad):
        raise InvalidCatalogChange(f"the vector of item {ids[int(bad[0])]!r} is not finite")
    floats = v.astype(np.float32)
    encoding = manifest.item_encoding
    if encoding == "pq4":
        if pq is None:
            raise InvalidCatalogChange("a pq4 version without codebooks cannot encode vectors")
        packed = pq_encode(pq, floats)
        return {i: packed[n].tobytes() for n, i in enumerate(ids)}
    with np.errstate(over="ignore"):  # an overflow is refused just below
        stored, scales = encode_items(floats, encoding)
    if not np.isfinite(stored.astype(np.float32)).all():
        raise InvalidCatalogChange(f"a vector is out of the range of {encoding}")
    if scales is None:
        return {i: stored[n].tobytes() for n, i in enumerate(ids)}
    lead = scales.astype("<f4")
    return {i: lead[n].tobytes() + stored[n].tobytes() for n, i in enumerate(ids)}


def pq_encode(pq: PQTable, vectors: F32) -> npt.NDArray[np.uint8]:
    """(n, dim) vectors -> (n, M / 2) packed codes: the nearest centroid of each subspace."""
    parts = vectors.reshape(len(vectors), pq.m, 1, -1)  # (n, M, 1, dim / M)
    dist = ((parts - pq.codebooks[None]) ** 2).sum(axis=3)  # (n, M, K)
    return pack_codes(dist.argmin(axis=2))


def decode_rows(
    manifest: Manifest, pq: PQTable | None, stored: Mapping[str, bytes]
) -> tuple[Rows, list[str]]:
    """Stored rows -> the serving form, and the IDs whose bytes do not fit this bundle
    (skipped: a row written for another shape of the same version name cannot be served)."""
    size = row_bytes(manifest, pq)
    good = [(i, b) for i, b in stored.items() if len(b) == size and size > 0]
    skipped = [i for i, b in stored.items() if len(b) != size or size == 0]
    ids = tuple(i for i, _ in good)
    raw = np.frombuffer(b"".join(b for _, b in good), dtype=np.uint8).reshape(len(good), size)
    encoding = manifest.item_encoding
    if encoding in ("int8", "int4"):
        scales = raw[:, :SCALE_BYTES].copy().view("<f4").reshape(-1).astype(np.float32)
        body = np.ascontiguousarray(raw[:, SCALE_BYTES:])
        rows = body.view(np.int8) if encoding == "int8" else unpack_int4(body)
        bad = ~np.isfinite(scales) | (scales < 0)
        if bad.any():
            skipped += [ids[n] for n in np.flatnonzero(bad).tolist()]
            keep = ~bad
            ids = tuple(i for i, k in zip(ids, keep.tolist(), strict=True) if k)
            rows, scales = rows[keep], scales[keep]
        return Rows(ids, np.ascontiguousarray(rows), scales), skipped
    if encoding == "pq4":
        return Rows(ids, np.ascontiguousarray(raw), None), skipped
    dtype = np.float16 if encoding == "fp16" else np.float32
    return Rows(ids, np.ascontiguousarray(raw).view(dtype), None), skipped


def check_item_ids(ids: Sequence[str], *, max_length: int) -> None:
    """Raise InvalidCatalogChange for an empty ID or one longer than `max_length`."""
    for n, item in enumerate(ids):
        if not item or len(item) > max_length:
            raise InvalidCatalogChange(
                f"item_ids[{n}] must have 1 to {max_length} characters, got {len(item)}"
            )
