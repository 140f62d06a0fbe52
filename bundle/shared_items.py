"""The encoder's item table, stored once: shared with the bundle's item files.

SASRec ties its input item embedding to the scoring matrix, which the bundle stores as
`items.npy` (`bundle.encode_items`: int8 or int4 with one scale per row, or fp16/fp32; or pq4
codes and `codebooks.npy`). So as not to store that matrix twice, `share_item_table` replaces
the encoder's item-embedding lookup (whatever quantization made of it) with a lookup into
exactly that encoding:

    Gather(items, item_seq) -> Cast(float) -> Mul(Unsqueeze(Gather(item_scales, item_seq), -1))

(no Cast for fp32, no Mul without scales; int4 rows are gathered as packed bytes and split
into their two 4-bit values, low nibble first, minus 8, before the Cast), and
`link_item_table` turns the initializers into ONNX external data pointing into the bundle's
`items.npy` / `item_scales.npy` / `codebooks.npy`, at the offset where `np.save` puts the raw
array (`bundle.npy_data_offset`). The self-contained model is what the pipeline runs
(evaluation, golden outputs); the linked one is what it ships: same graph, same values, the
table stored once. It is bundle-format work, so it lives here, with no torch: the pipeline
(`models.compress`), the benchmarks and the test factories (`testkit.bundles`) all use it.

    served = share_item_table(int8_bytes, item_matrix, "int8")   # runs from bytes
    shipped = link_item_table(served)                              # model.onnx of the bundle
    bundle.write_bundle(dir, onnx_model=shipped, item_matrix=item_matrix, item_encoding="int8", ...)
    check_linked_bundle(dir, served)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from bundle.io import CODEBOOKS_FILE, ITEMS_FILE, MODEL_FILE, SCALES_FILE, npy_data_offset
from bundle.items import INT4_OFFSET, encode_items
from bundle.manifest import ItemEncoding
from bundle.pq import PQTable

# Initializer names of the shared tables; each maps to the bundle file that holds its bytes.
ITEMS_INIT = "items"
SCALES_INIT = "item_scales"
CODEBOOKS_INIT = "item_codebooks"
LINKED_FILES = {
    ITEMS_INIT: ITEMS_FILE,
    SCALES_INIT: SCALES_FILE,
    CODEBOOKS_INIT: CODEBOOKS_FILE,
}


class ShareError(ValueError):
    """The encoder's item-embedding lookup cannot be shared with the bundle's item matrix."""


def share_item_table(
    model: bytes, item_matrix: npt.NDArray[np.floating] | PQTable, encoding: ItemEncoding
) -> bytes:
    """Make `model`'s item embedding read `encode_items(item_matrix, encoding)` (for
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
        stored, scales = encode_items(item_matrix, encoding)
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
            "offset": str(npy_data_offset(array)),
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
    shipped = onnx.load(str(bundle_dir / MODEL_FILE), load_external_data=True)
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
