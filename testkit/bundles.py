"""Small but real bundles, built without torch, and the corruption helpers that spoil them.

The encoder is a genuine ONNX graph made with `onnx.helper`:

    item_seq int64 (B, T) -> Gather(E) (B, T, D) -> masked mean over real items (B, D)
                          -> MatMul W + b -> Tanh -> user_vec float32 (B, D)

with dynamic batch and sequence axes; E doubles as the (tied) item scoring matrix. With
`shared_items`, the encoder looks items up in the bundle's own items.npy / item_scales.npy
(ONNX external data, `bundle.shared.share_item_table` + `link_item_table`, as the pipeline
ships it). The golden outputs are computed with onnxruntime, exactly as the offline pipeline
does. Corruption helpers produce each kind of bad bundle the service must refuse.

    from testkit.bundles import BundleSpec, make_bundle_dir
    make_bundle_dir(tmp_path / "v1", BundleSpec(version="v1", item_encoding="pq4"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bundle import PQTable, pack_bundle, write_bundle
from bundle.io import sha256_file
from bundle.shared_items import link_item_table, share_item_table

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
        recipe={"made_by": "testkit/bundles.py", "seed": spec.seed},
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


def make_bundle_archive(work_dir: Path, spec: BundleSpec | None = None, **overrides: Any) -> bytes:
    """A valid bundle as .tar.gz bytes (built in a fresh subdirectory of `work_dir`)."""
    spec = spec or BundleSpec()
    if overrides:
        spec = BundleSpec(**{**spec.__dict__, **overrides})
    bundle_dir = work_dir / f"src-{spec.version}-{spec.seed}"
    if not bundle_dir.exists():
        make_bundle_dir(bundle_dir, spec)
    return pack_bundle(bundle_dir)


# --- corruption helpers ---------------------------------------------------------------------


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle_dir / "manifest.json").read_text())
    return data


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def replace_file(bundle_dir: Path, name: str, data: bytes) -> None:
    """Replace a bundle file AND its manifest entry: the bundle stays self-consistent, so the
    check that must catch the problem is the one beyond checksums."""
    (bundle_dir / name).write_bytes(data)
    manifest = read_manifest(bundle_dir)
    manifest["files"][name] = {
        "bytes": (bundle_dir / name).stat().st_size,
        "sha256": sha256_file(bundle_dir / name),
    }
    write_manifest(bundle_dir, manifest)


def corrupt_checksum(bundle_dir: Path) -> None:
    """Flip one byte of the item matrix without updating the manifest."""
    path = bundle_dir / "items.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupt_golden(bundle_dir: Path) -> None:
    """Golden outputs the encoder does not reproduce."""
    manifest = read_manifest(bundle_dir)
    manifest["golden"][0]["output"] = [x + 0.5 for x in manifest["golden"][0]["output"]]
    write_manifest(bundle_dir, manifest)


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


def corrupt_nan_encoder(bundle_dir: Path, spec: BundleSpec) -> None:
    """An encoder with a NaN weight: every user vector comes out NaN."""
    p = make_parameters(spec)
    weight = p["W"].copy()
    weight[0, 0] = np.nan
    replace_file(bundle_dir, "model.onnx", make_encoder_onnx(p["E"], weight, p["b"]))


def corrupt_onnx_bytes(bundle_dir: Path) -> None:
    """model.onnx that is not an ONNX model at all."""
    replace_file(bundle_dir, "model.onnx", b"this is not a protobuf" * 10)
