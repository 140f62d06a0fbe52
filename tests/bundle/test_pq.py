from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from bundle import CODEBOOKS_FILE, ITEMS_FILE, BundleError, PQTable, read_bundle
from bundle.pq import pack_codes, unpack_codes
from tests.factories import make_bundle_dir, pq_table, replace_file


def random_table(rows: int = 50, m: int = 4, k: int = 16, sub: int = 3, seed: int = 0) -> PQTable:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, size=(rows, m))
    return PQTable.from_codes(codes, rng.standard_normal((m, k, sub)))


def test_codes_pack_two_per_byte_low_nibble_first_and_unpack_back() -> None:
    codes = np.array([[1, 2, 15, 0], [7, 8, 3, 12]], dtype=np.uint8)
    packed = pack_codes(codes)
    assert packed.tolist() == [[0x21, 0x0F], [0x87, 0xC3]]
    np.testing.assert_array_equal(unpack_codes(packed), codes)
    with pytest.raises(ValueError, match="M even"):
        pack_codes(codes[:, :3])
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack_codes(codes + 4)


def test_scores_from_lookup_tables_equal_dot_products_with_the_decoded_table() -> None:
    table = random_table()
    users = np.random.default_rng(1).standard_normal((5, table.dim)).astype(np.float32)
    rows = np.array([0, 3, 7, 49, 3])
    got = table.scores(table.lookup_tables(users), np.broadcast_to(rows, (5, len(rows))))
    want = users @ table.decode(rows).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # decode: item i is its M centroids side by side
    codes = table.codes()
    np.testing.assert_array_equal(
        table.decode(np.array([7]))[0, 3:6], table.codebooks[1, codes[7, 1]]
    )
    assert table.nbytes == 50 * 2 + 4 * 16 * 3 * 4


def test_a_pq4_bundle_round_trips_its_codes_and_codebooks(tmp_path: Path) -> None:
    path = make_bundle_dir(tmp_path / "b", item_encoding="pq4", dim=8, n_items=60)
    b = read_bundle(path)
    assert b.manifest.item_encoding == "pq4"
    assert b.pq is not None and b.item_scales is None
    assert b.items.shape == (61, 2) and b.items.dtype == np.uint8  # 4 subspaces: 2 bytes per item
    assert b.pq.codebooks.shape == (4, 16, 2)
    assert (path / CODEBOOKS_FILE).is_file()


def test_pq_table_from_a_matrix_reconstructs_it_closely() -> None:
    matrix = np.random.default_rng(2).standard_normal((300, 8)).astype(np.float32)
    table = pq_table(matrix, m=4)
    err = np.linalg.norm(table.decode() - matrix) / np.linalg.norm(matrix)
    assert err < 0.5  # 16 centroids for 2-dim slices of Gaussian data


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("nan", "codebooks.npy contains NaN or Inf"),
        ("few_centroids", "holds code 1[0-5], but codebooks.npy has only 10 centroids"),
        ("shape", r"items.npy must be uint8 \(rows, M / 2\)"),
        ("rows", r"make a \(61, 6\) item table, manifest says \(61, 8\)"),
    ],
)
def test_a_corrupt_codebook_or_out_of_range_codes_are_refused_by_name(
    tmp_path: Path, corrupt: str, message: str
) -> None:
    path = make_bundle_dir(tmp_path / "b", item_encoding="pq4", dim=8, n_items=60)
    b = read_bundle(path)
    assert b.pq is not None
    codebooks, packed = b.pq.codebooks.copy(), b.pq.packed.copy()
    if corrupt == "nan":
        codebooks[1, 3, 0] = np.nan
    elif corrupt == "few_centroids":
        codebooks = codebooks[:, :10]  # codes 10..15 now point past the codebook
        packed[5] = 0xFF
    elif corrupt == "shape":
        packed = packed[:, :1]
    else:  # two subspaces of 3: a 6-dim table under an 8-dim manifest
        codebooks = np.random.default_rng(3).standard_normal((2, 16, 3)).astype(np.float32)
        packed = packed[:, :1]
    for name, array in ((CODEBOOKS_FILE, codebooks), (ITEMS_FILE, packed)):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        replace_file(path, name, buf.getvalue())
    with pytest.raises(BundleError, match=message):
        read_bundle(path)
