"""Export the SASRec encoder to ONNX and prove it computes what PyTorch computes.

Signature (the bundle contract): input "item_seq" int64 (batch, seq) left-padded with 0,
output "user_vec" float32 (batch, dim). Both the batch and the sequence axes are dynamic,
so the service may trim padding to the longest history of a micro-batch.

The graph is `SASRec.last_state`: the user vector depends only on the last position, so the
final block computes that position's query, attention row and FFN and nothing else (every
position still gives keys and values). `check_parity` compares it with the model's full
`forward`, the computation it was trained with.

We use the TorchScript-based exporter (`dynamo=False`): for this small, static-control-flow
model it is ~20x faster than the torch.export path and needs no shape constraints. Its
deprecation warning is silenced only around the call.

    onnx_bytes = export_onnx(model)
    max_diff = check_parity(onnx_bytes, model, split.test.inputs(max_len=50))
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import numpy.typing as npt
import torch

from models.evaluate import onnx_encoder, torch_encoder
from models.sasrec import SASRec

INPUT_NAME = "item_seq"
OUTPUT_NAME = "user_vec"
OPSET = 17


class ParityError(RuntimeError):
    """The exported ONNX model does not reproduce the PyTorch model."""


def export_onnx(model: SASRec, *, opset: int = OPSET) -> bytes:
    """Serialize the encoder (eval mode, CPU copy) as ONNX bytes."""
    m = copy.deepcopy(model).cpu().eval()
    # Export the served computation under the model's own parameter names (item_emb.weight...).
    m.forward = m.last_state  # type: ignore[method-assign]
    L = m.config.max_len
    example = torch.zeros(2, L, dtype=torch.int64)
    example[:, -3:] = torch.tensor([1, 2, 3])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*legacy TorchScript-based ONNX export.*",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore", message=".*feature will be removed.*", category=DeprecationWarning
        )
        torch.onnx.export(
            m,
            (example,),
            buf,  # type: ignore[arg-type]  # file objects are accepted at run time
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "seq"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return buf.getvalue()


def max_abs_diff(
    onnx_model: bytes, model: SASRec, inputs: npt.NDArray[np.int64], *, batch_size: int = 256
) -> float:
    """Largest |onnxruntime - PyTorch| over the rows of `inputs`, also on left-trimmed input."""
    ort_enc = onnx_encoder(onnx_model)
    torch_enc = torch_encoder(copy.deepcopy(model).cpu())
    diff = 0.0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size]
        got, want = ort_enc(x), torch_enc(x)
        if got.shape != want.shape:
            raise ParityError(f"ONNX output shape {got.shape}, PyTorch {want.shape}")
        diff = max(diff, float(np.abs(got - want).max()))
    # The dynamic sequence axis: trim padding to the longest history in a batch.
    x = inputs[:batch_size]
    longest = int((x > 0).sum(1).max())
    trimmed = x[:, x.shape[1] - max(longest, 1) :]
    return max(diff, float(np.abs(ort_enc(trimmed) - torch_enc(x)).max()))


def check_parity(
    onnx_model: bytes, model: SASRec, inputs: npt.NDArray[np.int64], *, atol: float = 1e-4
) -> float:
    """`max_abs_diff`, raising ParityError above `atol`."""
    diff = max_abs_diff(onnx_model, model, inputs)
    if not diff <= atol:
        raise ParityError(f"ONNX export differs from PyTorch: max abs diff {diff:.3g} > {atol:.3g}")
    return diff
