"""Write and read bundle directories, checking every file against the manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from bundle.errors import BundleError
from bundle.items import encode_items, unpack_int4
from bundle.manifest import FileInfo, Golden, ItemEncoding, Manifest
from bundle.pq import PQTable

MODEL_FILE = "model.onnx"
ITEMS_FILE = "items.npy"
SCALES_FILE = "item_scales.npy"
CODEBOOKS_FILE = "codebooks.npy"  # pq4 only: items.npy then holds the packed codes
VOCAB_FILE = "vocab.json"
POPULARITY_FILE = "popularity.npy"
MANIFEST_FILE = "manifest.json"
PAD_ID = ""
MAX_GOLDEN = 256  # golden pairs a reader accepts (the pipeline writes a handful)
# onnxruntime session settings every runner of a bundle's model.onnx uses (the pipeline's
# evaluation and golden outputs, the service): DequantizeLinear of constant int8 weights is
# folded to fp32 once at load instead of run per call (models.quantize, "float" activations).
ENCODER_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, loaded into memory (the encoder stays a file for onnxruntime)."""

    path: Path
    manifest: Manifest
    # (n_items + 1, dim) int8 / fp16 / fp32; int4: uint8 (n_items + 1, dim / 2), two values
    # per byte (`int8_rows` unpacks them); pq4: packed codes
    items: npt.NDArray[np.generic]
    item_scales: npt.NDArray[np.float32] | None  # (n_items + 1,) when items is int8 or int4
    vocab: list[str]  # index -> external ID; vocab[0] == ""
    popularity: npt.NDArray[np.int64]  # (n_items + 1,)
    codebooks: npt.NDArray[np.float32] | None = None  # pq4: (M, K, dim / M)

    @property
    def pq(self) -> PQTable | None:
        """The product-quantized item table of a pq4 bundle."""
        if self.codebooks is None:
            return None
        return PQTable(self.items.astype(np.uint8, copy=False), self.codebooks)

    def int8_rows(self) -> npt.NDArray[np.int8]:
        """The int8 or int4 item rows as int8 (n_items + 1, dim), to score with `item_scales`:
        an int4 table is unpacked into a new array (values -8..7, twice its stored bytes)."""
        if self.manifest.item_encoding == "int4":
            return unpack_int4(self.items.astype(np.uint8, copy=False))
        if self.manifest.item_encoding == "int8":
            return self.items.astype(np.int8, copy=False)
        raise ValueError(f"a {self.manifest.item_encoding} item table has no int8 rows")

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def version(self) -> str:
        return self.manifest.model_version


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _ByteCounter:
    """A write-only file object that only counts: how long `np.save` output would be."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


def npy_data_offset(array: npt.NDArray[Any]) -> int:
    """Where the raw data of `array` starts in the .npy file `np.save` writes for it.

    `np.save` writes a header, then the array's bytes in C order. An ONNX initializer stored
    as external data at (offset = this, length = array.nbytes) therefore reads the file's array
    unchanged: that is how `model.onnx` shares the item matrix with `items.npy` (see
    `bundle.shared_items.link_item_table`).
    """
    a = np.asarray(array)
    if not a.flags.c_contiguous:
        raise ValueError("only C-contiguous arrays are stored contiguously by np.save")
    counter = _ByteCounter()
    np.lib.format.write_array(counter, a, allow_pickle=False)
    return counter.n - a.nbytes


def _save_npy(path: Path, array: npt.NDArray[Any]) -> None:
    array = np.ascontiguousarray(array)  # a Fortran-ordered array would be saved transposed
    np.save(path, array, allow_pickle=False)
    # The promise `npy_data_offset` makes to the ONNX side: header, then the raw data.
    expected = npy_data_offset(array) + array.nbytes
    if path.stat().st_size != expected:
        raise BundleError(f"{path.name} is {path.stat().st_size} bytes, expected {expected}")


def write_bundle(
    out_dir: Path,
    *,
    model_version: str,
    onnx_model: bytes,
    item_matrix: npt.NDArray[np.floating] | PQTable,
    vocab: Sequence[str],
    popularity: npt.NDArray[np.integer],
    max_len: int,
    golden_inputs: npt.NDArray[np.int64],
    golden_outputs: npt.NDArray[np.float32],
    item_encoding: ItemEncoding = "int8",
    golden_atol: float = 1e-3,
    architecture: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    dataset: dict[str, Any] | None = None,
) -> Manifest:
    """Write a complete bundle into `out_dir` (created; must not hold another bundle).

    `item_matrix` is float (n_items + 1, dim) with row 0 the padding row; `vocab[0]` must be "".
    `golden_outputs` must come from running `onnx_model` on `golden_inputs`.

    `onnx_model` may read the item matrix from this bundle's own `items.npy` (and
    `item_scales.npy`) as ONNX external data, at offset `npy_data_offset(stored)`, where
    `stored, scales = encode_items(item_matrix, item_encoding)`: the files written here hold
    exactly those arrays, so the encoder's item embedding and the scoring matrix are one copy.

    A `PQTable` (item_encoding "pq4") is stored as its packed codes (`items.npy`) and
    codebooks (`codebooks.npy`); the encoder may read both the same way. "int4" stores the
    packed 4-bit rows (`bundle.items.pack_int4`) and their scales.
    """
    vocab = list(vocab)
    n_rows, dim = _table_shape(item_matrix, item_encoding, vocab, popularity)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST_FILE).exists():
        raise BundleError(f"{out_dir} already holds a bundle")
    (out_dir / MODEL_FILE).write_bytes(onnx_model)
    _write_item_table(out_dir, item_matrix, item_encoding)
    _write_vocab(out_dir, vocab)
    _write_popularity(out_dir, popularity)
    manifest = Manifest(
        model_version=model_version,
        created_at=datetime.now(UTC),
        dim=dim,
        max_len=max_len,
        n_items=n_rows - 1,
        item_encoding=item_encoding,
        architecture=architecture or {},
        recipe=recipe or {},
        metrics=metrics or {},
        dataset=dataset or {},
        files=_file_infos(out_dir),
        golden=_golden_pairs(golden_inputs, golden_outputs),
        golden_atol=golden_atol,
    )
    (out_dir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def _table_shape(
    item_matrix: npt.NDArray[np.floating] | PQTable,
    item_encoding: ItemEncoding,
    vocab: list[str],
    popularity: npt.NDArray[np.integer],
) -> tuple[int, int]:
    """(rows, dim) of the item table, once it agrees with the encoding, vocab and popularity."""
    if isinstance(item_matrix, PQTable) != (item_encoding == "pq4"):
        raise BundleError('item_encoding "pq4" goes with a PQTable item table, and only with one')
    n_rows, dim = (
        (item_matrix.rows, item_matrix.dim)
        if isinstance(item_matrix, PQTable)
        else item_matrix.shape
    )
    if vocab[0] != PAD_ID:
        raise BundleError("vocab[0] must be the padding entry ''")
    if len(vocab) != n_rows or len(popularity) != n_rows:
        raise BundleError(
            f"vocab ({len(vocab)}), popularity ({len(popularity)}) and item matrix ({n_rows}) "
            "must have the same number of rows"
        )
    return n_rows, dim


def _write_item_table(
    out_dir: Path, item_matrix: npt.NDArray[np.floating] | PQTable, item_encoding: ItemEncoding
) -> None:
    """`items.npy` and, by encoding, `item_scales.npy` or `codebooks.npy`."""
    if isinstance(item_matrix, PQTable):
        item_matrix.check()
        _save_npy(out_dir / ITEMS_FILE, item_matrix.packed)
        _save_npy(out_dir / CODEBOOKS_FILE, item_matrix.codebooks)
        return
    stored, scales = encode_items(item_matrix, item_encoding)
    _save_npy(out_dir / ITEMS_FILE, stored)
    if scales is not None:
        _save_npy(out_dir / SCALES_FILE, scales)


def _write_vocab(out_dir: Path, vocab: list[str]) -> None:
    # Compact JSON: the default separators add a space per ID, which a large catalog pays for.
    (out_dir / VOCAB_FILE).write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )


def _write_popularity(out_dir: Path, popularity: npt.NDArray[np.integer]) -> None:
    counts = np.asarray(popularity, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise BundleError("popularity counts must not be negative")
    # int32 holds any realistic count at half the bytes; int64 only when a count needs it.
    if counts.size == 0 or counts.max() <= np.iinfo(np.int32).max:
        counts = counts.astype(np.int32)
    np.save(out_dir / POPULARITY_FILE, counts, allow_pickle=False)


def _file_infos(out_dir: Path) -> dict[str, FileInfo]:
    """Size and sha256 of every file written so far (all but the manifest)."""
    return {
        p.name: FileInfo(bytes=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(out_dir.iterdir())
        if p.name != MANIFEST_FILE
    }


def _golden_pairs(inputs: npt.NDArray[np.int64], outputs: npt.NDArray[np.float32]) -> list[Golden]:
    return [
        Golden(input=[int(x) for x in i], output=[float(x) for x in o])
        for i, o in zip(inputs, outputs, strict=True)
    ]


def read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise BundleError(f"{MANIFEST_FILE} is missing")
    try:
        return Manifest.model_validate_json(file.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise BundleError(f"{MANIFEST_FILE} is invalid at {where}: {first['msg']}") from e


def _load_npy(path: Path) -> npt.NDArray[Any]:
    """A plain numeric .npy array. Never unpickles, and never allocates more than the file
    holds: the header is read first and must be a numeric dtype whose shape accounts for
    exactly the bytes that follow. Reading the .npy format directly (not `np.load`) also
    refuses .npz archives and pickle streams, which `np.load` would sniff and open."""
    fmt = np.lib.format
    try:
        with path.open("rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise BundleError(f"{path.name} is .npy format {version}; 1.0 or 2.0 expected")
            if dtype.hasobject:
                raise BundleError(
                    f"{path.name} holds Python objects (object dtype, pickled); "
                    "only plain numeric arrays are accepted"
                )
            if dtype.kind not in "biuf":
                raise BundleError(
                    f"{path.name} has dtype {dtype}; only numeric arrays are accepted"
                )
            data_bytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if f.tell() + data_bytes != path.stat().st_size:
                raise BundleError(
                    f"{path.name} declares shape {shape} ({data_bytes} bytes of data) but the "
                    f"file holds {path.stat().st_size - f.tell()}"
                )
            f.seek(0)
            array: npt.NDArray[Any] = fmt.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path.name} is not a plain .npy array: {e}") from e
    return array


def read_bundle(path: Path) -> Bundle:
    """Load a bundle directory, verifying sizes, sha256 sums, shapes and values.

    Raises BundleError naming the first problem found. Does not run the encoder: see
    `verify_golden`.

    `model.onnx` may read external data (the shared item matrix). This reader does not parse
    ONNX; what makes that safe is that the directory then holds only the listed, regular,
    sha256-verified files, and onnxruntime (>= 1.17), given the model's *path*, refuses
    external data outside the model's directory (absolute paths, `..`, symlinks leading
    out), in missing files, or beyond a file's end. Create the session from
    `Bundle.model_path`, never from the bytes: from bytes, onnxruntime resolves locations
    against the working directory.
    """
    manifest = read_manifest(path)
    _check_listing(path, manifest)
    _check_files(path, manifest)
    items, scales, codebooks = _read_item_table(path, manifest)
    vocab = _read_vocab(path, manifest.n_items + 1)
    popularity = _read_popularity(path, manifest.n_items + 1)
    _check_golden(manifest)
    bad_metrics = sorted(k for k, v in manifest.metrics.items() if not np.isfinite(v))
    if bad_metrics:
        raise BundleError(f"manifest metrics {bad_metrics} are NaN or Inf")
    return Bundle(
        path=path,
        manifest=manifest,
        items=items,
        item_scales=scales,
        vocab=vocab,
        popularity=popularity.astype(np.int64),
        codebooks=codebooks,
    )


def _check_listing(path: Path, manifest: Manifest) -> None:
    """The manifest lists every file the encoding needs, by plain name, and the directory
    holds nothing else."""
    required = {MODEL_FILE, ITEMS_FILE, VOCAB_FILE, POPULARITY_FILE}
    if manifest.item_encoding in _SCALED:
        required.add(SCALES_FILE)
    if manifest.item_encoding == "pq4":
        required.add(CODEBOOKS_FILE)
    for name in manifest.files:
        if name in ("", ".", "..", MANIFEST_FILE) or "/" in name or "\\" in name:
            raise BundleError(f"manifest lists {name!r}; bundle files are plain file names")
    missing = required - manifest.files.keys()
    if missing:
        raise BundleError(f"manifest does not list {', '.join(sorted(missing))}")
    present = {p.name for p in path.iterdir()} - {MANIFEST_FILE}
    unexpected = present - manifest.files.keys()
    if unexpected:
        raise BundleError(f"files not listed in the manifest: {', '.join(sorted(unexpected))}")


def _check_files(path: Path, manifest: Manifest) -> None:
    """Every listed file is a regular file of the listed size and sha256."""
    for name, info in manifest.files.items():
        file = path / name
        if not file.is_file() or file.is_symlink():
            raise BundleError(f"{name} is missing or not a regular file")
        if file.stat().st_size != info.bytes:
            raise BundleError(f"{name} has {file.stat().st_size} bytes, manifest says {info.bytes}")
        if sha256_file(file) != info.sha256:
            raise BundleError(f"{name} does not match its sha256 in the manifest")


def _read_item_table(
    path: Path, manifest: Manifest
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None]:
    """(items, scales of an int8 / int4 table, codebooks of a pq4 one), checked."""
    items = _load_npy(path / ITEMS_FILE)
    codebooks = None
    if manifest.item_encoding == "pq4":
        codebooks = _read_pq(path, manifest, items)
    else:
        _check_rows(manifest, items)
    if items.dtype.kind == "f" and not np.isfinite(items).all():
        raise BundleError(f"{ITEMS_FILE} contains NaN or Inf")
    scales = None
    if manifest.item_encoding in _SCALED:
        scales = _read_scales(path, manifest)
    return items, scales, codebooks


def _read_vocab(path: Path, rows: int) -> list[str]:
    """`vocab.json`: `rows` distinct, non-blank string IDs after the padding entry ''."""
    try:
        vocab = json.loads((path / VOCAB_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{VOCAB_FILE} is not valid JSON (or nested too deeply): {e}") from e
    # map() over builtins, not generators: these checks run on every activation, holding
    # the GIL while requests are being served.
    if not isinstance(vocab, list) or not set(map(type, vocab)) <= {str}:
        raise BundleError(f"{VOCAB_FILE} must be a list of strings")
    if len(vocab) != rows:
        raise BundleError(f"{VOCAB_FILE} has {len(vocab)} entries, expected n_items + 1 = {rows}")
    if vocab[0] != PAD_ID:
        raise BundleError(f"{VOCAB_FILE} entry 0 must be the padding entry ''")
    if not all(map(str.strip, vocab[1:])):
        empty = [i for i, v in enumerate(vocab) if i > 0 and not v.strip()]
        raise BundleError(
            f"{VOCAB_FILE} has empty item IDs at indices {empty[:5]}; only entry 0 may be ''"
        )
    if len(set(vocab)) != rows:
        counts: dict[str, int] = {}
        for v in vocab:
            counts[v] = counts.get(v, 0) + 1
        dupes = sorted(v for v, n in counts.items() if n > 1)
        raise BundleError(f"{VOCAB_FILE} has duplicate item IDs: {dupes[:5]}")
    return vocab


def _read_popularity(path: Path, rows: int) -> npt.NDArray[Any]:
    """`popularity.npy`: int32 or int64 (rows,), no negative counts."""
    popularity = _load_npy(path / POPULARITY_FILE)
    if popularity.dtype not in (np.int32, np.int64) or popularity.shape != (rows,):
        raise BundleError(
            f"{POPULARITY_FILE} must be int32 or int64 ({rows},), got {popularity.dtype} {popularity.shape}"
        )
    if popularity.min() < 0:
        raise BundleError(f"{POPULARITY_FILE} holds negative counts")
    return popularity


def _check_golden(manifest: Manifest) -> None:
    """At least one and at most MAX_GOLDEN golden pairs, each shaped for this encoder."""
    if not manifest.golden:
        raise BundleError("manifest has no golden input/output pairs")
    if len(manifest.golden) > MAX_GOLDEN:
        # They all run through the encoder as one batch on every install and activation.
        raise BundleError(
            f"manifest has {len(manifest.golden)} golden pairs; at most {MAX_GOLDEN} are accepted"
        )
    for g in manifest.golden:
        if len(g.input) != manifest.max_len or len(g.output) != manifest.dim:
            raise BundleError("golden pair has the wrong input length or output size")
        if min(g.input) < 0 or max(g.input) > manifest.n_items:
            raise BundleError("golden input holds an item index outside the vocabulary")
        if not np.isfinite(np.asarray(g.output, dtype=np.float64)).all():
            raise BundleError("golden output contains NaN or Inf")


_ITEM_DTYPES = {"int8": np.int8, "int4": np.uint8, "fp16": np.float16, "fp32": np.float32}
_SCALED = ("int8", "int4")  # encodings with one float32 scale per row


def _check_rows(manifest: Manifest, items: npt.NDArray[Any]) -> None:
    """The dtype and shape of a row table (int8, int4, fp16, fp32) against the manifest."""
    encoding, rows, dim = manifest.item_encoding, manifest.n_items + 1, manifest.dim
    if encoding == "int4" and dim % 2:
        raise BundleError(f"manifest says int4 with dim {dim}; int4 rows need an even dim")
    width = dim // 2 if encoding == "int4" else dim
    if items.dtype != _ITEM_DTYPES[encoding] or items.shape != (rows, width):
        packed = ", two 4-bit values per byte" if encoding == "int4" else ""
        raise BundleError(
            f"{ITEMS_FILE} is {items.dtype} {items.shape}, manifest says "
            f"{encoding} ({rows}, {width}){packed}"
        )


def _read_scales(path: Path, manifest: Manifest) -> npt.NDArray[np.float32]:
    """`item_scales.npy` of an int8 or int4 bundle: float32 (rows,), finite."""
    rows = manifest.n_items + 1
    scales = _load_npy(path / SCALES_FILE)
    if scales.dtype != np.float32 or scales.shape != (rows,):
        raise BundleError(
            f"{SCALES_FILE} must be float32 ({rows},), got {scales.dtype} {scales.shape}"
        )
    if not np.isfinite(scales).all():
        raise BundleError(f"{SCALES_FILE} contains NaN or Inf")
    # int4's quantizer writes only positive scales; a zero or negative one would silently
    # zero or invert an item's scores. The padding row is never scored.
    if manifest.item_encoding == "int4" and not (scales[1:] > 0).all():
        bad = (np.flatnonzero(scales[1:] <= 0)[:5] + 1).tolist()
        raise BundleError(f"{SCALES_FILE} has scales <= 0 at rows {bad}; int4 needs them > 0")
    return scales


def _read_pq(path: Path, manifest: Manifest, packed: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The codebooks of a pq4 bundle, checked against its packed codes and the manifest."""
    codebooks = _load_npy(path / CODEBOOKS_FILE)
    table = PQTable(packed, codebooks)
    table.check(codes_file=ITEMS_FILE, codebooks_file=CODEBOOKS_FILE)
    if table.rows != manifest.n_items + 1 or table.dim != manifest.dim:
        raise BundleError(
            f"{ITEMS_FILE} and {CODEBOOKS_FILE} make a ({table.rows}, {table.dim}) item table, "
            f"manifest says ({manifest.n_items + 1}, {manifest.dim})"
        )
    return table.codebooks


def verify_golden(
    bundle: Bundle, encode: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]
) -> float:
    """Run `encode` on the golden inputs; raise BundleError unless it reproduces the outputs.

    Returns the largest absolute difference seen.
    """
    m = bundle.manifest
    inputs = np.array([g.input for g in m.golden], dtype=np.int64)
    expected = np.array([g.output for g in m.golden], dtype=np.float32)
    got = np.asarray(encode(inputs), dtype=np.float32)
    if got.shape != expected.shape:
        raise BundleError(f"encoder output shape {got.shape}, golden outputs {expected.shape}")
    if not np.isfinite(got).all():
        raise BundleError("encoder produced NaN or Inf on the golden inputs")
    diff = float(np.abs(got - expected).max())
    if diff > m.golden_atol:
        raise BundleError(
            f"encoder does not reproduce the golden outputs: max abs diff {diff:.3g} "
            f"> tolerance {m.golden_atol:.3g}"
        )
    return diff
