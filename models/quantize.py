"""INT8 dynamic quantization of the exported encoder with onnxruntime's tools.

`quantize_dynamic` stores MatMul/Gemm weights as int8 (per output channel) and quantizes
activations on the fly (DynamicQuantizeLinear + MatMulInteger); Gather tables (the item
embedding) are stored as int8 and dequantized after the lookup. `reduce_range=True` keeps
weights to 7 bits so u8·s8 products cannot saturate the 16-bit intermediate sums of AVX2
kernels without VNNI: the same file then gives the same answer on every x86 CPU, which is
what the bundle's golden check needs (onnxruntime docs, "Quantize ONNX models",
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html).

SASRec ties its input item embedding to the scoring matrix, which the bundle stores as
`items.npy` (`bundle.encode_items`: int8 with one scale per row, or fp16/fp32). So as not to
store that matrix twice, `share_item_table` replaces the encoder's item-embedding lookup
(whatever quantize_dynamic made of it) with a lookup into exactly that encoding:

    Gather(items, item_seq) -> Cast(float) -> Mul(Unsqueeze(Gather(item_scales, item_seq), -1))

(no Cast for fp32, no Mul without scales), and `link_item_table` turns the two initializers
into ONNX external data pointing into the bundle's `items.npy` / `item_scales.npy`, at the
offset where `np.save` puts the raw array (`bundle.npy_data_offset`). The self-contained model
is what the pipeline runs (evaluation, golden outputs); the linked one is what it ships:
same graph, same values, the table stored once.

    int8_bytes = quantize_onnx(fp32_bytes, QuantizeConfig())
    served = share_item_table(int8_bytes, item_matrix, "int8")   # runs from bytes
    shipped = link_item_table(served)                              # model.onnx of the bundle
    bundle.write_bundle(dir, onnx_model=shipped, item_matrix=item_matrix, item_encoding="int8", ...)
    check_linked_bundle(dir, served)
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import bundle
from bundle.manifest import ItemEncoding

# Initializer names of the shared tables; each maps to the bundle file that holds its bytes.
ITEMS_INIT = "items"
SCALES_INIT = "item_scales"
LINKED_FILES = {ITEMS_INIT: bundle.ITEMS_FILE, SCALES_INIT: bundle.SCALES_FILE}


@dataclass
class QuantizeConfig:
    per_channel: bool = True
    reduce_range: bool = True
    embeddings: bool = True  # also quantize Gather tables (the item embedding)


def quantize_onnx(fp32_model: bytes, config: QuantizeConfig | None = None) -> bytes:
    """Return INT8 ONNX bytes for the fp32 ONNX `fp32_model`."""
    c = config or QuantizeConfig()
    ops = ["MatMul", "Gemm"] + (["Gather"] if c.embeddings else [])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_model)
        # The quantizer logs per-node chatter at INFO/WARNING; keep the CLI readable.
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
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


class ShareError(ValueError):
    """The encoder's item-embedding lookup cannot be shared with the bundle's item matrix."""


def share_item_table(
    model: bytes, item_matrix: npt.NDArray[np.floating], encoding: ItemEncoding
) -> bytes:
    """Make `model`'s item embedding read `bundle.encode_items(item_matrix, encoding)`.

    The lookup replaced is the one Gather of a 2-D initializer by the graph input, together
    with the DequantizeLinear quantize_dynamic puts after it when it quantized the table. The
    result is self-contained (plain initializers `ITEMS_INIT` / `SCALES_INIT`).
    """
    m = onnx.load_from_string(model)
    g = m.graph
    stored, scales = bundle.encode_items(item_matrix, encoding)
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
    if tuple(table.dims) != stored.shape:
        raise ShareError(f"the encoder's item table is {tuple(table.dims)}, items {stored.shape}")
    if any(name in inits for name in (ITEMS_INIT, SCALES_INIT)):
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
    nodes = [helper.make_node("Gather", [ITEMS_INIT, seq], [p + "rows"], name=p + "Gather")]
    rows = p + "rows"
    if stored.dtype != np.float32:
        nodes.append(
            helper.make_node("Cast", [rows], [p + "rows_f"], to=TensorProto.FLOAT, name=p + "Cast")
        )
        rows = p + "rows_f"
    new_inits = [_little_endian_tensor(stored, ITEMS_INIT)]
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
