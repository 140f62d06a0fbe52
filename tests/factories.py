"""Test data made in one place: small but real bundles, built without torch.

The encoder is a genuine ONNX graph made with `onnx.helper`:

    item_seq int64 (B, T) -> Gather(E) (B, T, D) -> masked mean over real items (B, D)
                          -> MatMul W + b -> Tanh -> user_vec float32 (B, D)

with dynamic batch and sequence axes; E doubles as the (tied) item scoring matrix. With
`shared_items`, the encoder looks items up in the bundle's own items.npy / item_scales.npy
(ONNX external data, `models.quantize.share_item_table` + `link_item_table`, as the pipeline
ships it). The golden outputs are computed with onnxruntime, exactly as the offline pipeline
does. Corruption helpers produce each kind of bad bundle the service must refuse.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import redis
from onnx import TensorProto, helper, numpy_helper

from bundle import PQTable, pack_bundle, write_bundle
from bundle.io import sha256_file
from service.runner import RecRequest

OPSET = 17
IR_VERSION = 9


@dataclass(frozen=True)
class BundleSpec:
    version: str = "v1"
    n_items: int = 60
    dim: int = 8
    max_len: int = 12
    item_encoding: str = "int8"
    seed: int = 0
    n_golden: int = 4
    shared_items: bool = False  # model.onnx reads the item table from items.npy
    ndcg: float = 0.0  # manifest metrics test_ndcg@10 (what models.compress writes), ndcg@10
    slow_layers: int = 0  # extra (2048 x 2048) MatMul + Tanh layers: a deliberately slow encoder
    user_offset: float = 0.0  # added to the encoder's bias on its first axis: a component that
    # every user vector shares, as a trained encoder's do


def item_ids(n_items: int) -> list[str]:
    return [f"i{i}" for i in range(1, n_items + 1)]


def make_encoder_onnx(
    embeddings: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    input_name: str = "item_seq",
    output_name: str = "user_vec",
    input_type: int = TensorProto.INT64,
    batch_dim: str | int = "batch",
    slow_layers: int = 0,
) -> bytes:
    """Serialized ONNX model of the masked-mean encoder described above.

    `slow_layers` > 0 inserts that many (B, 2048) x (2048, 2048) MatMul + Tanh layers before
    the output (weights made at load time by ConstantOfShape, so the file stays small): a
    valid encoder that is slow on purpose, for the latency gate."""
    seq_input = input_name if input_type == TensorProto.INT64 else f"{input_name}_cast"
    nodes = []
    if input_type != TensorProto.INT64:
        nodes.append(helper.make_node("Cast", [input_name], [seq_input], to=TensorProto.INT64))
    nodes += [
        helper.make_node("Gather", ["E", seq_input], ["emb"]),  # (B, T, D)
        helper.make_node("Greater", [seq_input, "zero_i"], ["is_item"]),  # (B, T)
        helper.make_node("Cast", ["is_item"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),  # (B, T, 1)
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # (B, D)
        helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),  # (B, 1)
        helper.make_node("Max", ["count", "one_f"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "W"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["pre"]),
    ]
    if slow_layers:
        hidden = 2048
        nodes += [
            helper.make_node(
                "ConstantOfShape",
                ["shape_up"],
                ["W_up"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.05]),
            ),
            helper.make_node(
                "ConstantOfShape",
                ["shape_hh"],
                ["W_hh"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0 / hidden]),
            ),
            helper.make_node(
                "ConstantOfShape",
                ["shape_down"],
                ["W_down"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.01]),
            ),
            helper.make_node("MatMul", ["pre", "W_up"], ["h0"]),
        ]
        for layer in range(slow_layers):
            nodes += [
                helper.make_node("MatMul", [f"h{layer}", "W_hh"], [f"m{layer}"]),
                helper.make_node("Tanh", [f"m{layer}"], [f"h{layer + 1}"]),
            ]
        nodes += [
            helper.make_node("MatMul", [f"h{slow_layers}", "W_down"], ["down"]),
            helper.make_node("Add", ["down", "pre"], ["pre_slow"]),
            helper.make_node("Tanh", ["pre_slow"], [output_name]),
        ]
    else:
        nodes.append(helper.make_node("Tanh", ["pre"], [output_name]))
    inits = [
        numpy_helper.from_array(embeddings.astype(np.float32), "E"),
        numpy_helper.from_array(weight.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero_i"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one_f"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
    ]
    dim = embeddings.shape[1]
    if slow_layers:
        inits += [
            numpy_helper.from_array(np.array([dim, 2048], dtype=np.int64), "shape_up"),
            numpy_helper.from_array(np.array([2048, 2048], dtype=np.int64), "shape_hh"),
            numpy_helper.from_array(np.array([2048, dim], dtype=np.int64), "shape_down"),
        ]
    graph = helper.make_graph(
        nodes,
        "masked_mean_encoder",
        [helper.make_tensor_value_info(input_name, input_type, [batch_dim, "seq"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_dim, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    encoded: bytes = model.SerializeToString()
    return encoded


def run_onnx(model: bytes, seqs: np.ndarray, *, output: str = "user_vec") -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out,) = session.run([output], {name: seqs})
    return np.asarray(out, dtype=np.float32)


def golden_inputs(rng: np.random.Generator, *, n: int, n_items: int, max_len: int) -> np.ndarray:
    """Left-padded sequences of varied length, including an all-padding one."""
    seqs = np.zeros((n, max_len), dtype=np.int64)
    for row in range(1, n):
        length = int(rng.integers(1, max_len + 1))
        seqs[row, max_len - length :] = rng.integers(1, n_items + 1, size=length)
    return seqs


def make_parameters(spec: BundleSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    embeddings = rng.normal(0, 1, size=(spec.n_items + 1, spec.dim)).astype(np.float32)
    embeddings[0] = 0.0  # padding row
    weight = rng.normal(0, 1 / np.sqrt(spec.dim), size=(spec.dim, spec.dim)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=spec.dim).astype(np.float32)
    bias[0] += spec.user_offset
    # Popularity: a steep, distinct ranking (item i1 most popular) so tests can predict it.
    popularity = np.concatenate([[0], np.arange(spec.n_items, 0, -1) * 10]).astype(np.int64)
    return {"E": embeddings, "W": weight, "b": bias, "popularity": popularity}


def make_bundle_dir(out_dir: Path, spec: BundleSpec | None = None, **overrides: Any) -> Path:
    """Write a complete, valid bundle for `spec` into `out_dir` and return it."""
    spec = spec or BundleSpec()
    if overrides:
        spec = BundleSpec(**{**spec.__dict__, **overrides})
    p = make_parameters(spec)
    model = make_encoder_onnx(p["E"], p["W"], p["b"], slow_layers=spec.slow_layers)
    shipped = model
    if spec.shared_items:
        from models.quantize import link_item_table, share_item_table  # no torch in there

        model = share_item_table(model, p["E"], spec.item_encoding)  # type: ignore[arg-type]
        shipped = link_item_table(model)
    rng = np.random.default_rng(spec.seed + 1)
    inputs = golden_inputs(rng, n=spec.n_golden, n_items=spec.n_items, max_len=spec.max_len)
    items: np.ndarray | PQTable = p["E"]
    if spec.item_encoding == "pq4":
        items = pq_table(p["E"], m=max(2, spec.dim // 2))
    write_bundle(
        out_dir,
        model_version=spec.version,
        onnx_model=shipped,
        item_matrix=items,
        vocab=["", *item_ids(spec.n_items)],
        popularity=p["popularity"],
        max_len=spec.max_len,
        golden_inputs=inputs,
        golden_outputs=run_onnx(model, inputs),
        item_encoding=spec.item_encoding,  # type: ignore[arg-type]
        architecture={"kind": "masked-mean-test-encoder", "dim": spec.dim},
        recipe={"made_by": "tests/factories.py", "seed": spec.seed},
        metrics={"test_ndcg@10": spec.ndcg, "ndcg@10": spec.ndcg},
    )
    return out_dir


def pq_table(matrix: np.ndarray, *, m: int, k: int = 16, iters: int = 8, seed: int = 0) -> PQTable:
    """A 4-bit product quantization of `matrix` (rows, dim) by a few k-means steps per
    subspace: test data, not the pipeline's training."""
    rng = np.random.default_rng(seed)
    rows, dim = matrix.shape
    parts = matrix.astype(np.float32).reshape(rows, m, dim // m)
    codebooks = np.empty((m, k, dim // m), dtype=np.float32)
    codes = np.empty((rows, m), dtype=np.uint8)
    for sub in range(m):
        x = parts[:, sub]
        centers = x[rng.choice(rows, size=k, replace=False)].copy()
        for _ in range(iters):
            nearest = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
            for c in range(k):
                if (nearest == c).any():
                    centers[c] = x[nearest == c].mean(0)
        codes[:, sub] = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        codebooks[sub] = centers
    return PQTable.from_codes(codes, codebooks)


def clustered_items(
    n_items: int, dim: int, *, n_clusters: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (n_items + 1, dim) item matrix shaped like trained embeddings: items around
    `n_clusters` topic centres with varied norms; row 0 (padding) is zero. Also returns
    each item's cluster (-1 for row 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(n_clusters, dim))
    topic = np.concatenate([[-1], rng.integers(0, n_clusters, size=n_items)])
    items = centres[topic[1:]] + 0.6 * rng.normal(0, 1, size=(n_items, dim))
    items *= rng.lognormal(0, 0.25, size=(n_items, 1))
    return np.vstack([np.zeros((1, dim)), items]).astype(np.float32), topic


def clustered_users(
    items: np.ndarray, topic: np.ndarray, n_users: int, *, seed: int = 0
) -> np.ndarray:
    """User vectors like an encoder's: the mean of a few items of one topic, plus noise."""
    rng = np.random.default_rng(seed)
    topics = rng.choice(topic[1:], size=n_users)
    users = [items[rng.choice(np.flatnonzero(topic == t), size=5)].mean(axis=0) for t in topics]
    noisy = np.asarray(users) + 0.3 * rng.normal(0, 1, size=(n_users, items.shape[1]))
    return noisy.astype(np.float32)


def make_bundle_archive(work_dir: Path, spec: BundleSpec | None = None, **overrides: Any) -> bytes:
    """A valid bundle as .tar.gz bytes (built in a fresh subdirectory of `work_dir`)."""
    spec = spec or BundleSpec()
    if overrides:
        spec = BundleSpec(**{**spec.__dict__, **overrides})
    bundle_dir = work_dir / f"src-{spec.version}-{spec.seed}"
    if not bundle_dir.exists():
        make_bundle_dir(bundle_dir, spec)
    return pack_bundle(bundle_dir)


def reference_user_vector(spec: BundleSpec, history_idx: list[int]) -> np.ndarray:
    """What the encoder computes for item indices `history_idx` (numpy twin of the graph)."""
    p = make_parameters(spec)
    seq = [i for i in history_idx if i > 0][-spec.max_len :]
    mean = p["E"][seq].mean(axis=0) if seq else np.zeros(spec.dim, dtype=np.float32)
    vector: np.ndarray = np.tanh(mean @ p["W"] + p["b"]).astype(np.float32)
    return vector


def varied_requests(n: int, *, n_items: int = 60, seed: int = 0) -> list[RecRequest]:
    """`n` different requests: histories of varied length (empty every 10th, unknown IDs
    mixed in), k from 1 to 24, candidates every 3rd, excluded items, exclude_seen on and off."""
    rng = np.random.default_rng(seed)
    ids = [*item_ids(n_items), "unknown-1", "unknown-2"]

    def some(low: int, high: int) -> list[str]:
        return [str(i) for i in rng.choice(ids, size=int(rng.integers(low, high)))]

    return [
        RecRequest(
            history=[] if row % 10 == 0 else some(1, 16),
            k=int(rng.integers(1, 25)),
            candidates=some(1, 20) if row % 3 == 0 else None,
            exclude=some(0, 5),
            exclude_seen=row % 2 == 0,
        )
        for row in range(n)
    ]


# --- corruption helpers ---------------------------------------------------------------------


def _manifest(bundle_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle_dir / "manifest.json").read_text())
    return data


def _write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def replace_file(bundle_dir: Path, name: str, data: bytes) -> None:
    """Replace a bundle file AND its manifest entry: the bundle stays self-consistent, so the
    check that must catch the problem is the one beyond checksums."""
    (bundle_dir / name).write_bytes(data)
    manifest = _manifest(bundle_dir)
    manifest["files"][name] = {
        "bytes": (bundle_dir / name).stat().st_size,
        "sha256": sha256_file(bundle_dir / name),
    }
    _write_manifest(bundle_dir, manifest)


def corrupt_checksum(bundle_dir: Path) -> None:
    """Flip one byte of the item matrix without updating the manifest."""
    path = bundle_dir / "items.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupt_vocab_size(bundle_dir: Path) -> None:
    """One vocabulary entry too many (checksums updated)."""
    vocab = json.loads((bundle_dir / "vocab.json").read_text())
    replace_file(bundle_dir, "vocab.json", json.dumps([*vocab, "extra-item"]).encode())


def corrupt_golden(bundle_dir: Path) -> None:
    """Golden outputs the encoder does not reproduce."""
    manifest = _manifest(bundle_dir)
    manifest["golden"][0]["output"] = [x + 0.5 for x in manifest["golden"][0]["output"]]
    _write_manifest(bundle_dir, manifest)


def corrupt_onnx_signature(bundle_dir: Path, spec: BundleSpec, *, kind: str = "name") -> None:
    """Swap in an encoder whose signature does not match the manifest:
    kind = "name" (input renamed), "dtype" (float input) or "batch" (fixed batch of 4)."""
    p = make_parameters(spec)
    kwargs: dict[str, Any] = {  # type: ignore[assignment]
        "name": {"input_name": "seq"},
        "dtype": {"input_type": TensorProto.FLOAT},
        "batch": {"batch_dim": spec.n_golden},
    }[kind]
    replace_file(bundle_dir, "model.onnx", make_encoder_onnx(p["E"], p["W"], p["b"], **kwargs))


def relink_external_data(bundle_dir: Path, initializer: str, **entries: str | int) -> None:
    """Point the external data of `initializer` in model.onnx elsewhere (location, offset,
    length), keeping the manifest consistent."""
    model = onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False)
    (tensor,) = [t for t in model.graph.initializer if t.name == initializer]
    for e in tensor.external_data:
        if e.key in entries:
            e.value = str(entries[e.key])
    replace_file(bundle_dir, "model.onnx", model.SerializeToString())


def corrupt_nan_encoder(bundle_dir: Path, spec: BundleSpec) -> None:
    """An encoder with a NaN weight: every user vector comes out NaN."""
    p = make_parameters(spec)
    weight = p["W"].copy()
    weight[0, 0] = np.nan
    replace_file(bundle_dir, "model.onnx", make_encoder_onnx(p["E"], weight, p["b"]))


def corrupt_onnx_bytes(bundle_dir: Path) -> None:
    """model.onnx that is not an ONNX model at all."""
    replace_file(bundle_dir, "model.onnx", b"this is not a protobuf" * 10)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def traversal_archive() -> bytes:
    info = tarfile.TarInfo("../escaped.txt")
    info.size = 4
    return _tar([(info, b"evil")])


def symlink_archive() -> bytes:
    info = tarfile.TarInfo("model.onnx")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return _tar([(info, None)])


def bomb_archive(unpacked_bytes: int) -> bytes:
    """A tiny .tar.gz that unpacks to `unpacked_bytes` of zeros."""
    info = tarfile.TarInfo("items.npy")
    info.size = unpacked_bytes
    return _tar([(info, bytes(unpacked_bytes))])


def repack(bundle_dir: Path) -> bytes:
    return pack_bundle(bundle_dir)


# --- the hostile corpus: one malicious or unacceptable bundle per gate ----------------------


@dataclass(frozen=True)
class HostileCase:
    """A .tar.gz the service must refuse, and the text its refusal must contain.

    `gate` is "mandatory" (always enforced), or "accuracy" / "latency" (refused only when the
    service has GATE_MAX_NDCG_DROP / GATE_MAX_LATENCY_MS set)."""

    name: str
    archive: bytes
    reason: str
    gate: str = "mandatory"


# Extra layers of the latency-gate case: measured 45-50 ms per batch-1 call for 192 of them
# on an unloaded 2-core AMD EPYC (cache-bound), so 512 stay well over the limits the tests
# and bench-swap set (30-50 ms, GATE_MAX_LATENCY_MS) on a fast day too.
SLOW_LAYERS = 512


def _member(
    name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "manifest.json"
    return info, None


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_shape_bomb(real: np.ndarray, rows: int = 10**12) -> bytes:
    """A .npy whose header claims `rows` rows but whose data is that of `real`: a reader that
    trusts the header allocates terabytes."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(real.dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buf, {**header, "shape": (rows, *real.shape[1:])})
    return buf.getvalue() + np.ascontiguousarray(real).tobytes()


def hostile_corpus(
    work_dir: Path,
    *,
    prefix: str = "hostile",
    serving_metric: tuple[str, float] | None = None,
) -> list[HostileCase]:
    """Build the corpus under `work_dir` (created). Every bundle gets its own version name
    (`<prefix>-<case>`), so one wrongly accepted never collides with another.

    `serving_metric` = (metric, value) of the serving version: the accuracy case then claims
    a tenth of that value; without it the accuracy case is left out."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cases: list[HostileCase] = []

    def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
        return _tar(list(members))

    # Archive safety: each unsafe member comes first, ahead of a valid bundle's files.
    cases += [
        HostileCase("path_traversal", archive(_member("../escaped.txt")), "escapes the bundle"),
        HostileCase("absolute_path", archive(_member("/tmp/evil.txt")), "absolute path"),
        HostileCase("symlink", archive(_member("model.onnx", kind=tarfile.SYMTYPE)), "is a link"),
        HostileCase("hardlink", archive(_member("model.onnx", kind=tarfile.LNKTYPE)), "is a link"),
        HostileCase(
            "device_file", archive(_member("model.onnx", kind=tarfile.CHRTYPE)), "not a regular"
        ),
        HostileCase("subdirectory", archive(_member("sub/model.onnx")), "must be flat"),
        HostileCase(
            "too_many_files",
            archive(*(_member(f"f{i}.bin") for i in range(40))),
            "more than 16 files",
        ),
        HostileCase("decompression_bomb", bomb_archive(64 << 20), "decompression bomb"),
        HostileCase("not_a_tarball", b"\x1f\x8b but not really gzip", "not a valid .tar.gz"),
    ]

    def bundle_case(
        name: str, reason: str, corrupt: Any, *, gate: str = "mandatory", **spec: Any
    ) -> None:
        full = BundleSpec(**{"version": f"{prefix}-{name}".replace("_", "-"), **spec})
        d = make_bundle_dir(work_dir / name, full)
        corrupt(d, full)
        cases.append(HostileCase(name, pack_bundle(d), reason, gate))

    def set_manifest(**fields: Any) -> Any:
        def corrupt(d: Path, _: BundleSpec) -> None:
            m = _manifest(d)
            m.update(fields)
            _write_manifest(d, m)

        return corrupt

    def set_vocab(edit: Any) -> Any:
        def corrupt(d: Path, _: BundleSpec) -> None:
            vocab = json.loads((d / "vocab.json").read_text())
            replace_file(d, "vocab.json", json.dumps(edit(vocab)).encode())

        return corrupt

    def set_npy(name: str, make: Any) -> Any:
        def corrupt(d: Path, spec: BundleSpec) -> None:
            replace_file(d, name, _npy(make(np.load(d / name), spec)))

        return corrupt

    def golden_nan(d: Path, _: BundleSpec) -> None:
        m = _manifest(d)
        m["golden"][1]["output"][0] = float("nan")
        _write_manifest(d, m)

    def nan_items(a: np.ndarray, _: BundleSpec) -> np.ndarray:
        a = a.copy()
        a[3, 1] = np.nan
        return a

    def inf_scales(a: np.ndarray, _: BundleSpec) -> np.ndarray:
        a = a.copy()
        a[5] = np.inf
        return a

    def unlisted_file(d: Path, _: BundleSpec) -> None:
        (d / "payload.py").write_text("import os; os.system('id')\n")

    bundle_case("sha256_mismatch", "does not match its sha256", lambda d, s: corrupt_checksum(d))
    bundle_case("size_mismatch", "manifest says", set_manifest(n_items=61))
    bundle_case("unlisted_file", "not listed in the manifest", unlisted_file)
    bundle_case(
        "onnx_not_a_model", "cannot be loaded by onnxruntime", lambda d, s: corrupt_onnx_bytes(d)
    )
    bundle_case("onnx_wrong_input_name", "inputs are", corrupt_onnx_signature)
    bundle_case(
        "onnx_wrong_input_dtype",
        "expected tensor(int64)",
        lambda d, s: corrupt_onnx_signature(d, s, kind="dtype"),
    )
    bundle_case(
        "onnx_fixed_batch",
        "batch axis must be dynamic",
        lambda d, s: corrupt_onnx_signature(d, s, kind="batch"),
    )
    bundle_case(
        "vocab_length_mismatch", "vocab.json has 62 entries", set_vocab(lambda v: [*v, "x"])
    )
    bundle_case("vocab_duplicate_ids", "duplicate item IDs", set_vocab(lambda v: [*v[:-1], v[1]]))
    bundle_case("vocab_empty_id", "empty item IDs", set_vocab(lambda v: [v[0], "", *v[2:]]))
    bundle_case("vocab_not_strings", "list of strings", set_vocab(lambda v: [*v[:-1], 7]))
    bundle_case(
        "nan_items", "items.npy contains NaN", set_npy("items.npy", nan_items), item_encoding="fp32"
    )
    bundle_case(
        "inf_scales", "item_scales.npy contains NaN or Inf", set_npy("item_scales.npy", inf_scales)
    )
    bundle_case("nan_golden", "golden output contains NaN", golden_nan)

    def many_golden(d: Path, _: BundleSpec) -> None:
        m = _manifest(d)
        m["golden"] = m["golden"] * 100
        _write_manifest(d, m)

    bundle_case("too_many_golden_pairs", "golden pairs; at most", many_golden)
    bundle_case("golden_mismatch", "golden outputs", lambda d, s: corrupt_golden(d))
    bundle_case("nan_encoder", "NaN", corrupt_nan_encoder)
    bundle_case(
        "pickled_object_npy",
        "holds Python objects",
        set_npy("popularity.npy", lambda a, s: np.array([{"x": 1}] * len(a), dtype=object)),
    )
    bundle_case(
        "npy_shape_bomb",
        "declares shape (1000000000000,)",
        lambda d, _: replace_file(
            d, "popularity.npy", npy_shape_bomb(np.load(d / "popularity.npy"))
        ),
    )
    bundle_case(
        "vocab_deeply_nested",
        "nested too deeply",
        lambda d, _: replace_file(d, "vocab.json", b"[" * 200_000 + b"]" * 200_000),
    )
    bundle_case(
        "negative_popularity", "negative counts", set_npy("popularity.npy", lambda a, s: a - 100)
    )
    bundle_case(
        "popularity_wrong_shape",
        "popularity.npy must be",
        set_npy("popularity.npy", lambda a, s: a[:-1]),
    )
    bundle_case(
        "bad_version_name", "invalid at model_version", set_manifest(model_version="../../etc")
    )

    if serving_metric is not None:
        metric, value = serving_metric
        bundle_case(
            "accuracy_gate",
            "accuracy gate",
            set_manifest(metrics={metric: value / 10}),
            gate="accuracy",
        )
    # As accurate as the serving version (when known), so only its speed can fail it.
    as_good = set_manifest(metrics=dict([serving_metric])) if serving_metric else lambda d, s: None
    bundle_case("latency_gate", "latency gate", as_good, gate="latency", slow_layers=SLOW_LAYERS)
    return cases


def answered_version(client: httpx.Client, user_id: str | None = None) -> str:
    """The model_version that answers a small /recommend (with `user_id` for a canary split)."""
    body: dict[str, Any] = {"history": ["i1", "i2"], "k": 3}
    if user_id is not None:
        body["user_id"] = user_id
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    version: str = r.json()["model_version"]
    return version


def poll_until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> bool:
    """True as soon as `condition()` is; False if it still is not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not start."""


@dataclass
class RedisServer:
    """A private redis-server process in `workdir` (tests, `benchmarks.swap`).

    Without `persist` it keeps nothing on disk; with it, `stop` saves the data set to
    `workdir` and the next `start` (same port) loads it back, as a restarted Redis would."""

    workdir: Path
    port: int = 0
    persist: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on a free port, or again on the same port after `stop` (a restart)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisUnavailable(
                "redis-server is not installed: tests use a real Redis "
                "(apt-get install redis-server, or set REDIS_URL)"
            )
        self.port = self.port or free_port()
        save = ["--save", "3600 1"] if self.persist else ["--save", ""]
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", *save,
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RedisUnavailable(
                        f"redis-server did not start on port {self.port}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()
        return self

    def stop(self) -> None:
        """Stop the server (saving its data first when `persist`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.persist:
            client = redis.Redis(port=self.port, socket_connect_timeout=1)
            try:
                client.shutdown(save=True)
            except redis.ConnectionError:
                pass  # the expected answer to SHUTDOWN: the connection closes
            finally:
                client.close()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
