"""INT8 quantization of the exported encoder with onnxruntime's tools.

Weights of the MatMuls are int8, one scale per output channel. Activations come three ways:

- "static" (the default): each quantized MatMul's input gets one fixed scale and zero point,
  calibrated once on training histories (min/max), so every row of a batch is quantized the
  same way whoever rides with it: a shopper's answer does not depend on the batch
  (QLinearMatMul, `quantize_static`).
- "dynamic": the scale is computed per call over the whole batch tensor
  (DynamicQuantizeLinear + MatMulInteger, `quantize_dynamic`); cheaper per call, but a row's
  vector moves with its neighbours (measured in docs/decisions/2026-12-06-static-int8-encoder.md).
  It also stores Gather tables (the item embedding) as int8 and dequantizes after the lookup.
- "float": only the weights are int8, each behind a DequantizeLinear of the constant that
  onnxruntime folds back to fp32 once when the session is created
  (`bundle.ENCODER_SESSION_CONFIG`): fp32 activations at fp32 speed. fp32 products are not
  guaranteed to give a row the same bits alone as in a batch, though (integer ones are), so
  it is not the default (docs/decisions/2026-12-06-int8-weights-float-activations.md).

`reduce_range=True` (static and dynamic) keeps weights to 7 bits so u8·s8 products cannot
saturate the 16-bit intermediate sums of AVX2 kernels without VNNI: the same file then gives
the same answer on every x86 CPU, which is what the bundle's golden check needs (onnxruntime
docs, "Quantize ONNX models", https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html).

SASRec ties its input item embedding to the scoring matrix, which the bundle stores as
`items.npy` (`bundle.encode_items`: int8 or int4 with one scale per row, or fp16/fp32). So as
not to store that matrix twice, `share_item_table` replaces the encoder's item-embedding
lookup (whatever quantize_dynamic made of it) with a lookup into exactly that encoding:

    Gather(items, item_seq) -> Cast(float) -> Mul(Unsqueeze(Gather(item_scales, item_seq), -1))

(no Cast for fp32, no Mul without scales; int4 rows are gathered as packed bytes and split
into their two 4-bit values, low nibble first, minus 8, before the Cast), and
`link_item_table` turns the two initializers into ONNX external data pointing into the
bundle's `items.npy` / `item_scales.npy`, at the offset where `np.save` puts the raw array
(`bundle.npy_data_offset`). The self-contained model is what the pipeline runs (evaluation,
golden outputs); the linked one is what it ships: same graph, same values, the table stored
once.

    int8_bytes = quantize_onnx(fp32_bytes, QuantizeConfig(), calibration=train_histories)
    served = share_item_table(int8_bytes, item_matrix, "int8")   # runs from bytes
    shipped = link_item_table(served)                              # model.onnx of the bundle
    bundle.write_bundle(dir, onnx_model=shipped, item_matrix=item_matrix, item_encoding="int8", ...)
    check_linked_bundle(dir, served)
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import bundle
from bundle.items import INT4_OFFSET
from bundle.manifest import ItemEncoding
from bundle.pq import PQTable

# Initializer names of the shared tables; each maps to the bundle file that holds its bytes.
ITEMS_INIT = "items"
SCALES_INIT = "item_scales"
CODEBOOKS_INIT = "item_codebooks"
LINKED_FILES = {
    ITEMS_INIT: bundle.ITEMS_FILE,
    SCALES_INIT: bundle.SCALES_FILE,
    CODEBOOKS_INIT: bundle.CODEBOOKS_FILE,
}
CALIBRATION_BATCH = 64  # rows per calibration call

Activations = Literal["static", "dynamic", "float"]


@dataclass
class QuantizeConfig:
    per_channel: bool = True
    reduce_range: bool = True
    # dynamic only: also store the item embedding's Gather table as int8 (static leaves it
    # fp32; `share_item_table` replaces it with the bundle's table either way)
    embeddings: bool = True
    activations: Activations = "static"


class CalibrationError(ValueError):
    """Static quantization was asked for without usable calibration inputs."""


def quantize_onnx(
    fp32_model: bytes,
    config: QuantizeConfig | None = None,
    *,
    calibration: npt.NDArray[np.int64] | None = None,
) -> bytes:
    """Return INT8 ONNX bytes for the fp32 ONNX `fp32_model`. Static activations need
    `calibration`: (U, max_len) left-padded training histories, the inputs it is fitted on."""
    c = config or QuantizeConfig()
    if c.activations == "float":
        return quantize_weights(fp32_model)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_model)
        # The quantizer logs per-node chatter at INFO/WARNING; keep the CLI readable.
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            if c.activations == "static":
                _quantize_static(src, dst, c, calibration)
            else:
                ops = ["MatMul", "Gemm"] + (["Gather"] if c.embeddings else [])
                quantize_dynamic(
                    src,
                    dst,
                    op_types_to_quantize=ops,
                    per_channel=c.per_channel,
                    reduce_range=c.reduce_range,
                    weight_type=QuantType.QInt8,
                )
        finally:
            logger.setLevel(level)
        return dst.read_bytes()


class _Histories(CalibrationDataReader):  # type: ignore[misc]  # untyped base
    """Feeds the calibration histories to the quantizer in batches."""

    def __init__(self, input_name: str, histories: npt.NDArray[np.int64]) -> None:
        self._batches: Iterator[dict[str, npt.NDArray[np.int64]]] = (
            {input_name: histories[i : i + CALIBRATION_BATCH]}
            for i in range(0, len(histories), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.int64]] | None:
        return next(self._batches, None)


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight (an initializer): the
    projections and FFN layers, not the attention products of two activations."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def quantize_weights(fp32_model: bytes) -> bytes:
    """The "float" mode: each weight MatMul's (K, N) weight becomes int8 with one symmetric
    scale per output column, read through DequantizeLinear; nothing else changes."""
    model = onnx.load_from_string(fp32_model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    matmuls = set(weight_matmuls(model))
    names = sorted({n.input[1] for n in g.node if n.name in matmuls})
    dequantize = []
    for name in names:
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        if w.ndim != 2:
            raise ValueError(f"weight {name} has shape {w.shape}, expected (K, N)")
        scale = np.maximum(np.abs(w).max(axis=0), np.finfo(np.float32).tiny) / 127
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        g.initializer.remove(inits[name])
        g.initializer.extend([
            numpy_helper.from_array(q, f"{name}_int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
        ])  # fmt: skip
        dequantize.append(helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], axis=1,
            name=f"{name}_dequantize",
        ))  # fmt: skip
    nodes = dequantize + list(g.node)  # constants first keeps the graph topologically sorted
    del g.node[:]
    g.node.extend(nodes)
    out: bytes = model.SerializeToString()
    return out


def _quantize_static(
    src: Path, dst: Path, c: QuantizeConfig, calibration: npt.NDArray[np.int64] | None
) -> None:
    if calibration is None or calibration.ndim != 2 or not (calibration > 0).any():
        raise CalibrationError(
            "static INT8 needs calibration histories: a (users, max_len) array with items"
        )
    model = onnx.load(str(src))
    # Only the weight products: quantizing the attention products too was slower and gains
    # no bytes (they have no weights).
    quantize_static(
        src,
        dst,
        _Histories(model.graph.input[0].name, calibration),
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=weight_matmuls(model),
        per_channel=c.per_channel,
        reduce_range=c.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


class ShareError(ValueError):
    """The encoder's item-embedding lookup cannot be shared with the bundle's item matrix."""


def share_item_table(
    model: bytes, item_matrix: npt.NDArray[np.floating] | PQTable, encoding: ItemEncoding
) -> bytes:
    """Make `model`'s item embedding read `bundle.encode_items(item_matrix, encoding)` (for
    "int4" the packed rows, `_row_lookup`), or, for "pq4", the PQTable's packed codes and
    codebooks (`_pq_lookup`).

    The lookup replaced is the one Gather of a 2-D initializer by the graph input, together
    with the DequantizeLinear quantize_dynamic puts after it when it quantized the table (static
    quantization leaves the table fp32). The
    result is self-contained (plain initializers `ITEMS_INIT` / `SCALES_INIT`).
    """
    m = onnx.load_from_string(model)
    g = m.graph
    if isinstance(item_matrix, PQTable):
        shape: tuple[int, ...] = (item_matrix.rows, item_matrix.dim)
    else:
        stored, scales = bundle.encode_items(item_matrix, encoding)
        shape = np.shape(item_matrix)
    inits = {i.name: i for i in g.initializer}
    if len(g.input) != 1:
        raise ShareError(f"expected one graph input, got {[i.name for i in g.input]}")
    seq = g.input[0].name
    lookups = [
        n
        for n in g.node
        if n.op_type == "Gather"
        and list(n.input[1:]) == [seq]
        and n.input[0] in inits
        and len(inits[n.input[0]].dims) == 2
    ]
    if len(lookups) != 1:
        raise ShareError(f"expected one item-embedding Gather on {seq!r}, found {len(lookups)}")
    gather = lookups[0]
    if any(a.name == "axis" and a.i != 0 for a in gather.attribute):
        raise ShareError("the item-embedding Gather must gather rows (axis 0)")
    table = inits[gather.input[0]]
    if tuple(table.dims) != shape:
        raise ShareError(f"the encoder's item table is {tuple(table.dims)}, items {shape}")
    if any(name in inits for name in (ITEMS_INIT, SCALES_INIT, CODEBOOKS_INIT)):
        raise ShareError("the encoder already has shared item tables")
    replaced = [gather]
    out = gather.output[0]
    consumers = [n for n in g.node if out in n.input]
    if len(consumers) == 1 and consumers[0].op_type == "DequantizeLinear":
        replaced.append(consumers[0])
        out = consumers[0].output[0]
    elif table.data_type != TensorProto.FLOAT:
        raise ShareError("the item table is quantized, but not by a DequantizeLinear after it")

    p = "shared_items/"
    if isinstance(item_matrix, PQTable):
        nodes, new_inits = _pq_lookup(item_matrix, seq, p)
    else:
        nodes, new_inits = _row_lookup(stored, scales, seq, p)
    nodes[-1].output[0] = out  # the last new node produces what the old lookup produced
    position = list(g.node).index(gather)
    kept = [n for n in g.node if n not in replaced]
    del g.node[:]
    g.node.extend(kept[:position] + nodes + kept[position:])
    g.initializer.extend(new_inits)
    # The displaced table (and its quantization scale / zero point) is now unused: drop it.
    displaced = {name for n in replaced for name in n.input if name in inits}
    _drop_initializers(g, displaced - {name for n in g.node for name in n.input})
    onnx.checker.check_model(m)
    out_bytes: bytes = m.SerializeToString()
    return out_bytes


def _row_lookup(
    stored: npt.NDArray[np.generic], scales: npt.NDArray[np.float32] | None, seq: str, p: str
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Gather rows of the stored matrix, to float, times their scales (int8, int4). Packed
    int4 rows (uint8) are split into their values, minus 8, first: exactly
    `bundle.decode_items`, since each step (nibbles, int to float, one product) is exact or
    rounds once, as numpy does."""
    new_inits = [_little_endian_tensor(stored, ITEMS_INIT)]
    if stored.dtype == np.uint8:  # int4
        nodes, consts = _nibbles(seq, p, width=2 * stored.shape[1])
        nodes.append(
            helper.make_node("Sub", [p + "nibbles", p + "eight"], [p + "rows"], name=p + "Sub")
        )
        new_inits += consts
        new_inits.append(
            numpy_helper.from_array(np.array(INT4_OFFSET, dtype=np.int64), p + "eight")
        )
    else:
        nodes = [helper.make_node("Gather", [ITEMS_INIT, seq], [p + "rows"], name=p + "Gather")]
    rows = p + "rows"
    if stored.dtype != np.float32:
        nodes.append(
            helper.make_node("Cast", [rows], [p + "rows_f"], to=TensorProto.FLOAT, name=p + "Cast")
        )
        rows = p + "rows_f"
    if scales is not None:
        nodes += [
            helper.make_node("Gather", [SCALES_INIT, seq], [p + "scales"], name=p + "GatherS"),
            helper.make_node(
                "Unsqueeze", [p + "scales", p + "axis"], [p + "scales3"], name=p + "Unsqueeze"
            ),
            helper.make_node("Mul", [rows, p + "scales3"], [p + "out"], name=p + "Mul"),
        ]
        rows = p + "out"
        new_inits += [
            _little_endian_tensor(scales, SCALES_INIT),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "axis"),
        ]
    return nodes, new_inits


def _nibbles(seq: str, p: str, *, width: int) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Gather each position's packed bytes (B, T, width / 2) from `ITEMS_INIT` and split every
    byte into its low and high 4 bits, low first: `p + "nibbles"`, int64 (B, T, width) in
    0..15 (the layout of `bundle.pq.pack_codes`, which pq4 codes and int4 rows share)."""
    node = helper.make_node
    nodes = [
        node("Gather", [ITEMS_INIT, seq], [p + "bytes"], name=p + "Gather"),
        node("Cast", [p + "bytes"], [p + "bytes64"], to=TensorProto.INT64, name=p + "Cast64"),
        node("Mod", [p + "bytes64", p + "sixteen"], [p + "low"], name=p + "Low"),
        node("Div", [p + "bytes64", p + "sixteen"], [p + "high"], name=p + "High"),
        node("Unsqueeze", [p + "low", p + "last"], [p + "low4"], name=p + "UnsqueezeL"),
        node("Unsqueeze", [p + "high", p + "last"], [p + "high4"], name=p + "UnsqueezeH"),
        node("Concat", [p + "low4", p + "high4"], [p + "pairs"], axis=-1, name=p + "Pairs"),
        node("Reshape", [p + "pairs", p + "nibbles_shape"], [p + "nibbles"], name=p + "Nibbles"),
    ]
    consts = {
        "sixteen": np.array(16, dtype=np.int64),
        "last": np.array([-1], dtype=np.int64),
        "nibbles_shape": np.array([0, 0, width], dtype=np.int64),
    }
    return nodes, [numpy_helper.from_array(v, p + name) for name, v in consts.items()]


def _pq_lookup(table: PQTable, seq: str, p: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Each position's item vector from its 4-bit codes: the codes of the packed bytes
    (B, T, M, `_nibbles`), code m offset by m * K into the flattened codebooks
    (M * K, dim / M), the centroids gathered and laid side by side."""
    m, k, sub = table.codebooks.shape
    consts = {
        "offsets": (np.arange(m, dtype=np.int64) * k),
        "vec_shape": np.array([0, 0, m * sub], dtype=np.int64),
        "flat_shape": np.array([m * k, sub], dtype=np.int64),
    }
    node = helper.make_node
    nodes, nibble_consts = _nibbles(seq, p, width=m)
    nodes += [
        node("Add", [p + "nibbles", p + "offsets"], [p + "centroid"], name=p + "Offsets"),
        # the initializer keeps codebooks.npy's own (M, K, dim / M) shape, so external data
        # reads the file unchanged; flattened here (constant-folded when the session loads)
        node("Reshape", [CODEBOOKS_INIT, p + "flat_shape"], [p + "flat"], name=p + "Flat"),
        node("Gather", [p + "flat", p + "centroid"], [p + "parts"], name=p + "Centroids"),
        node("Reshape", [p + "parts", p + "vec_shape"], [p + "out"], name=p + "Vectors"),
    ]
    inits = [
        _little_endian_tensor(table.packed, ITEMS_INIT),
        _little_endian_tensor(table.codebooks, CODEBOOKS_INIT),
        *nibble_consts,
        *(numpy_helper.from_array(v, p + name) for name, v in consts.items()),
    ]
    return nodes, inits


def link_item_table(model: bytes) -> bytes:
    """`model` (from `share_item_table`) with the shared tables as external data in the
    bundle's item files: same graph, without the table's bytes."""
    m = onnx.load_from_string(model)
    for init in m.graph.initializer:
        if init.name not in LINKED_FILES:
            continue
        array = numpy_helper.to_array(init)
        entries = {
            "location": LINKED_FILES[init.name],
            "offset": str(bundle.npy_data_offset(array)),
            "length": str(array.nbytes),
        }
        for data_field in ("raw_data", "int32_data", "float_data"):
            init.ClearField(data_field)
        del init.external_data[:]
        for key, value in entries.items():
            e = init.external_data.add()
            e.key, e.value = key, value
        init.data_location = TensorProto.EXTERNAL
    if ITEMS_INIT not in {i.name for i in m.graph.initializer}:
        raise ShareError("the model has no shared item table; run share_item_table first")
    linked: bytes = m.SerializeToString()
    return linked


def check_linked_bundle(bundle_dir: Path, served: bytes) -> None:
    """Raise ShareError unless the bundle's `model.onnx`, resolved against its own files, holds
    exactly the initializers of `served` (so its item files hold the shared tables' bytes)."""
    shipped = onnx.load(str(bundle_dir / bundle.MODEL_FILE), load_external_data=True)
    want = {i.name: i for i in onnx.load_from_string(served).graph.initializer}
    got = {i.name: i for i in shipped.graph.initializer}
    if want.keys() != got.keys():
        raise ShareError("the bundle's model.onnx has other initializers than the served model")
    for name, tensor in want.items():
        a, b = numpy_helper.to_array(tensor), numpy_helper.to_array(got[name])
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            raise ShareError(f"initializer {name!r} differs between the bundle and the model")


def _little_endian_tensor(array: npt.NDArray[np.generic], name: str) -> TensorProto:
    # ONNX raw data is little-endian; so is what np.save writes on the machines we support.
    if sys.byteorder != "little":  # pragma: no cover
        raise ShareError("sharing the item table needs a little-endian machine")
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _drop_initializers(g: onnx.GraphProto, names: set[str]) -> None:
    kept = [i for i in g.initializer if i.name not in names]
    del g.initializer[:]
    g.initializer.extend(kept)
