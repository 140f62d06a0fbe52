"""INT8 dynamic quantization of the exported encoder with onnxruntime's tools.

`quantize_dynamic` stores MatMul/Gemm weights as int8 (per output channel) and quantizes
activations on the fly (DynamicQuantizeLinear + MatMulInteger); Gather tables (the item
embedding) are stored as int8 and dequantized after the lookup. `reduce_range=True` keeps
weights to 7 bits so u8·s8 products cannot saturate the 16-bit intermediate sums of AVX2
kernels without VNNI: the same file then gives the same answer on every x86 CPU, which is
what the bundle's golden check needs (onnxruntime docs, "Quantize ONNX models",
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html).

The item scoring matrix is not part of the ONNX graph: `bundle.encode_items` stores it as
int8 with one scale per row (or fp16).

    int8_bytes = quantize_onnx(fp32_bytes, QuantizeConfig())
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic


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
