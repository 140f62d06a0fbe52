"""The model bundle: the one contract between `models/` (makes bundles) and `service/` (serves them).

This package imports neither torch nor FastAPI, so both halves can use it.

A bundle is a flat directory (or the same files in a .tar.gz for upload):

    model.onnx        user encoder: int64 [batch, max_len] (left-padded with 0) -> float32 [batch, dim]
                      (its item embedding may read items.npy / item_scales.npy as ONNX external
                      data, so the tied item matrix is stored once: see `bundle.shared_items`)
    items.npy         item scoring matrix, row i = item index i (row 0 = padding), int8/fp16/fp32,
                      or int4: uint8 (rows, dim / 2), two values + 8 per byte, low nibble first
    item_scales.npy   float32 per-row scales when items.npy is int8 or int4
                      (score = (u . q_i) * scale_i; see `bundle.items`)
    codebooks.npy     pq4 only: float32 (M, K, dim / M) centroids; items.npy then holds each
                      item's M 4-bit codes, two per byte (see `bundle.pq`)
    vocab.json        external item IDs in index order; entry 0 is "" (padding)
    popularity.npy    interaction counts per index (int32, or int64 if needed), cold-start fallback
    manifest.json     see `bundle.manifest.Manifest`
"""

from bundle.archive import extract_archive, pack_bundle
from bundle.errors import BundleError
from bundle.io import (
    CODEBOOKS_FILE,
    ENCODER_SESSION_CONFIG,
    ITEMS_FILE,
    MODEL_FILE,
    SCALES_FILE,
    Bundle,
    npy_data_offset,
    read_bundle,
    verify_golden,
    write_bundle,
)
from bundle.items import decode_items, encode_items, pack_int4, quantize_int4, unpack_int4
from bundle.manifest import FORMAT_VERSION, FileInfo, Golden, Manifest
from bundle.pq import PQTable

__all__ = [
    "CODEBOOKS_FILE",
    "ENCODER_SESSION_CONFIG",
    "FORMAT_VERSION",
    "ITEMS_FILE",
    "MODEL_FILE",
    "SCALES_FILE",
    "Bundle",
    "BundleError",
    "FileInfo",
    "Golden",
    "Manifest",
    "PQTable",
    "decode_items",
    "encode_items",
    "extract_archive",
    "npy_data_offset",
    "pack_bundle",
    "pack_int4",
    "quantize_int4",
    "read_bundle",
    "unpack_int4",
    "verify_golden",
    "write_bundle",
]
