import io
import json
from pathlib import Path

import numpy as np
import pytest

from bundle import (
    BundleError,
    encode_items,
    npy_data_offset,
    read_bundle,
    unpack_int4,
    verify_golden,
    write_bundle,
)
from bundle.io import ITEMS_FILE, MANIFEST_FILE, POPULARITY_FILE, SCALES_FILE, VOCAB_FILE

N_ITEMS, DIM, MAX_LEN = 20, 8, 5


def _encode(seqs: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A stand-in encoder for the contract: mean of the non-padding item rows."""
    mask = (seqs > 0)[..., None]
    return ((table[seqs] * mask).sum(1) / np.maximum(mask.sum(1), 1)).astype(np.float32)


def _write(tmp_path: Path, **overrides: object) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    table = rng.normal(size=(N_ITEMS + 1, DIM)).astype(np.float32)
    table[0] = 0
    golden_in = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]], dtype=np.int64)
    kwargs: dict[str, object] = dict(
        model_version="v1",
        onnx_model=b"not really onnx; the reader does not parse it",
        item_matrix=table,
        vocab=["", *(f"sku-{i}" for i in range(1, N_ITEMS + 1))],
        popularity=np.arange(N_ITEMS + 1),
        max_len=MAX_LEN,
        golden_inputs=golden_in,
        golden_outputs=_encode(golden_in, table),
        metrics={"ndcg@10": 0.5},
    )
    kwargs.update(overrides)
    out = tmp_path / "b"
    write_bundle(out, **kwargs)  # type: ignore[arg-type]
    return out, table


def test_round_trip_keeps_everything_the_service_needs(tmp_path: Path) -> None:
    path, table = _write(tmp_path)
    b = read_bundle(path)
    assert b.version == "v1"
    assert b.manifest.n_items == N_ITEMS and b.manifest.dim == DIM
    assert b.items.dtype == np.int8 and b.item_scales is not None
    assert b.vocab[0] == "" and b.vocab[3] == "sku-3"
    assert b.popularity.tolist() == list(range(N_ITEMS + 1))
    assert b.manifest.metrics == {"ndcg@10": 0.5}
    assert set(b.manifest.files) == {
        "model.onnx",
        "items.npy",
        "item_scales.npy",
        "vocab.json",
        "popularity.npy",
    }
    assert verify_golden(b, lambda s: _encode(s, table)) == 0.0


@pytest.mark.parametrize("encoding", ["fp16", "fp32"])
def test_float_encodings_round_trip_without_scales(tmp_path: Path, encoding: str) -> None:
    path, _ = _write(tmp_path, item_encoding=encoding)
    b = read_bundle(path)
    assert b.item_scales is None
    assert not (path / "item_scales.npy").exists()


def test_writer_refuses_mismatched_vocab(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="same number of rows"):
        _write(tmp_path, vocab=["", "a"])


def test_writer_refuses_vocab_without_padding_entry(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="padding"):
        _write(tmp_path, vocab=[f"x{i}" for i in range(N_ITEMS + 1)])


def test_read_rejects_changed_file(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    (path / "model.onnx").write_bytes(b"not really onnx; the reader does not parse iT")
    with pytest.raises(BundleError, match=r"model\.onnx does not match its sha256"):
        read_bundle(path)


def test_read_rejects_missing_file(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    (path / POPULARITY_FILE).unlink()
    with pytest.raises(BundleError, match=r"popularity\.npy is missing"):
        read_bundle(path)


def test_read_rejects_unlisted_file(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    (path / "evil.py").write_text("print('hi')")
    with pytest.raises(BundleError, match=r"not listed in the manifest: evil\.py"):
        read_bundle(path)


def test_read_rejects_missing_or_invalid_manifest(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["model_version"] = "../escape"
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="invalid at model_version"):
        read_bundle(path)
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        read_bundle(path)


def _rewrite_listed_file(path: Path, name: str, data: bytes) -> None:
    """Replace a file and fix its manifest entry, so only the deeper checks can catch it."""
    from bundle.io import sha256_file

    (path / name).write_bytes(data)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": sha256_file(path / name)}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_read_rejects_vocab_with_duplicates_even_with_valid_checksum(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    vocab = ["", *(["dup"] * N_ITEMS)]
    _rewrite_listed_file(path, VOCAB_FILE, json.dumps(vocab).encode())
    with pytest.raises(BundleError, match="duplicate"):
        read_bundle(path)


def test_read_rejects_item_matrix_of_wrong_shape(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((N_ITEMS, DIM), dtype=np.int8))
    _rewrite_listed_file(path, ITEMS_FILE, other.read_bytes())
    with pytest.raises(BundleError, match=r"items\.npy is int8 \(20, 8\)"):
        read_bundle(path)


def test_read_rejects_nan_in_float_items(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, item_encoding="fp32")
    bad = np.zeros((N_ITEMS + 1, DIM), dtype=np.float32)
    bad[3, 1] = np.nan
    other = tmp_path / "nan.npy"
    np.save(other, bad)
    _rewrite_listed_file(path, ITEMS_FILE, other.read_bytes())
    with pytest.raises(BundleError, match="NaN or Inf"):
        read_bundle(path)


def test_read_refuses_pickled_arrays(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    other = tmp_path / "obj.npy"
    np.save(other, np.array([object()] * (N_ITEMS + 1), dtype=object), allow_pickle=True)
    _rewrite_listed_file(path, POPULARITY_FILE, other.read_bytes())
    with pytest.raises(BundleError, match=r"popularity\.npy holds Python objects"):
        read_bundle(path)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x80\x04\x95 a raw pickle stream, not .npy", r"not a plain \.npy array"),
        (b"PK\x03\x04 an .npz archive, which np.load would open", r"not a plain \.npy array"),
    ],
    ids=["pickle_stream", "npz"],
)
def test_read_refuses_files_that_are_not_npy(tmp_path: Path, payload: bytes, reason: str) -> None:
    path, _ = _write(tmp_path)
    _rewrite_listed_file(path, POPULARITY_FILE, payload)
    with pytest.raises(BundleError, match=reason):
        read_bundle(path)


def test_read_refuses_a_header_that_claims_more_data_than_the_file_holds(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)}
    )
    _rewrite_listed_file(path, POPULARITY_FILE, buf.getvalue() + bytes(4 * (N_ITEMS + 1)))
    with pytest.raises(BundleError, match=r"declares shape \(1000000000000,\)"):
        read_bundle(path)


def test_read_refuses_too_many_golden_pairs(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["golden"] = manifest["golden"] * 200  # 400 pairs
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="400 golden pairs; at most 256"):
        read_bundle(path)


def test_read_refuses_a_deeply_nested_vocab(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    _rewrite_listed_file(path, VOCAB_FILE, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_bundle(path)


def test_read_refuses_non_numeric_arrays(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    other = tmp_path / "str.npy"
    np.save(other, np.array(["a"] * (N_ITEMS + 1)))
    _rewrite_listed_file(path, POPULARITY_FILE, other.read_bytes())
    with pytest.raises(BundleError, match="only numeric arrays"):
        read_bundle(path)


def test_read_rejects_empty_item_ids_other_than_padding(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    vocab = ["", "a", "", *(f"sku-{i}" for i in range(3, N_ITEMS + 1))]
    _rewrite_listed_file(path, VOCAB_FILE, json.dumps(vocab).encode())
    with pytest.raises(BundleError, match=r"empty item IDs at indices \[2\]"):
        read_bundle(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_read_rejects_non_finite_golden_outputs_and_metrics(tmp_path: Path, value: str) -> None:
    path, _ = _write(tmp_path)
    text = (path / MANIFEST_FILE).read_text()
    manifest = json.loads(text)
    manifest["golden"][0]["output"][0] = float(value.replace("inity", ""))
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="golden output contains NaN or Inf"):
        read_bundle(path)
    manifest = json.loads(text)
    manifest["metrics"]["ndcg@10"] = float(value.replace("inity", ""))
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"metrics \['ndcg@10'\] are NaN or Inf"):
        read_bundle(path)


def test_verify_golden_rejects_an_encoder_that_computes_something_else(tmp_path: Path) -> None:
    path, table = _write(tmp_path)
    b = read_bundle(path)
    with pytest.raises(BundleError, match="does not reproduce the golden outputs"):
        verify_golden(b, lambda s: _encode(s, table) + 0.01)
    with pytest.raises(BundleError, match="NaN or Inf"):
        verify_golden(b, lambda s: _encode(s, table) * np.nan)
    with pytest.raises(BundleError, match="output shape"):
        verify_golden(b, lambda s: _encode(s, table)[:, :2])


def test_popularity_is_stored_as_int32_unless_a_count_needs_int64(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    assert np.load(path / POPULARITY_FILE).dtype == np.int32
    assert read_bundle(path).popularity.dtype == np.int64  # one dtype for the service
    big = np.arange(N_ITEMS + 1, dtype=np.int64)
    big[5] = 2**40
    path64, _ = _write(tmp_path / "big", popularity=big)
    assert np.load(path64 / POPULARITY_FILE).dtype == np.int64
    assert read_bundle(path64).popularity[5] == 2**40


def test_writer_and_reader_refuse_negative_popularity(tmp_path: Path) -> None:
    negative = np.arange(N_ITEMS + 1) - 3
    with pytest.raises(BundleError, match="negative"):
        _write(tmp_path, popularity=negative)
    path, _ = _write(tmp_path / "ok")
    other = tmp_path / "neg.npy"
    np.save(other, negative.astype(np.int32))
    _rewrite_listed_file(path, POPULARITY_FILE, other.read_bytes())
    with pytest.raises(BundleError, match="negative counts"):
        read_bundle(path)


def test_vocab_is_written_as_compact_utf8_json(tmp_path: Path) -> None:
    vocab = ["", "größe-1", *(f"sku-{i}" for i in range(2, N_ITEMS + 1))]
    path, _ = _write(tmp_path, vocab=vocab)
    text = (path / VOCAB_FILE).read_text(encoding="utf-8")
    assert text.startswith('["","größe-1","sku-2"')
    assert read_bundle(path).vocab == vocab


def test_int4_round_trip_keeps_the_packed_rows_and_unpacks_them(tmp_path: Path) -> None:
    path, table = _write(tmp_path, item_encoding="int4")
    b = read_bundle(path)
    assert b.manifest.item_encoding == "int4"
    assert b.items.dtype == np.uint8 and b.items.shape == (N_ITEMS + 1, DIM // 2)
    stored, scales = encode_items(table, "int4")
    assert (b.items == stored).all() and b.item_scales is not None
    assert (b.item_scales == scales).all()
    rows = b.int8_rows()
    assert rows.dtype == np.int8 and rows.shape == (N_ITEMS + 1, DIM)
    assert (rows == unpack_int4(stored)).all() and (rows[0] == 0).all()
    # half a byte per value: half of int8 rows
    data_bytes = (path / ITEMS_FILE).stat().st_size - npy_data_offset(stored)
    assert data_bytes == (N_ITEMS + 1) * DIM // 2


def test_int8_rows_are_refused_for_a_float_table(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, item_encoding="fp16")
    with pytest.raises(ValueError, match="fp16 item table has no int8 rows"):
        read_bundle(path).int8_rows()


def _npy_bytes(tmp_path: Path, array: np.ndarray) -> bytes:
    other = tmp_path / "other.npy"
    np.save(other, array)
    return other.read_bytes()


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        (
            np.zeros((N_ITEMS + 1, DIM), dtype=np.int8),
            r"items\.npy is int8 \(21, 8\), manifest says int4 \(21, 4\)",
        ),
        (np.zeros((N_ITEMS + 1, DIM // 2), dtype=np.int8), r"items\.npy is int8 \(21, 4\)"),
        (np.zeros((N_ITEMS, DIM // 2), dtype=np.uint8), r"items\.npy is uint8 \(20, 4\)"),
    ],
    ids=["unpacked", "signed_bytes", "missing_row"],
)
def test_read_rejects_int4_rows_of_the_wrong_dtype_or_shape(
    tmp_path: Path, items: np.ndarray, reason: str
) -> None:
    path, _ = _write(tmp_path, item_encoding="int4")
    _rewrite_listed_file(path, ITEMS_FILE, _npy_bytes(tmp_path, items))
    with pytest.raises(BundleError, match=reason):
        read_bundle(path)


@pytest.mark.parametrize(
    ("row", "value", "reason"),
    [
        (4, np.nan, r"item_scales\.npy contains NaN or Inf"),
        (4, -0.5, r"item_scales\.npy has scales <= 0 at rows \[4\]"),
        (7, 0.0, r"item_scales\.npy has scales <= 0 at rows \[7\]"),
    ],
    ids=["nan", "negative", "zero"],
)
def test_read_rejects_int4_scales_that_are_not_finite_and_positive(
    tmp_path: Path, row: int, value: float, reason: str
) -> None:
    path, _ = _write(tmp_path, item_encoding="int4")
    scales = np.load(path / SCALES_FILE)
    scales[row] = value
    _rewrite_listed_file(path, SCALES_FILE, _npy_bytes(tmp_path, scales))
    with pytest.raises(BundleError, match=reason):
        read_bundle(path)


def test_int4_padding_row_may_have_any_finite_scale(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, item_encoding="int4")
    scales = np.load(path / SCALES_FILE)
    scales[0] = -3.0
    _rewrite_listed_file(path, SCALES_FILE, _npy_bytes(tmp_path, scales))
    assert read_bundle(path).item_scales is not None


def test_read_rejects_int4_with_an_odd_dim(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, item_encoding="int4")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["dim"] = DIM + 1
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="int4 rows need an even dim"):
        read_bundle(path)
