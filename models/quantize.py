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

The quantized encoder's item-embedding lookup is then made to read the bundle's own item
table (`bundle.shared_items`, bundle-format work with no torch):

    int8_bytes = quantize_onnx(fp32_bytes, QuantizeConfig(), calibration=train_histories)
    served = bundle.shared_items.share_item_table(int8_bytes, item_matrix, "int8")
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

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
