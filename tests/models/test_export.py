from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from models.evaluate import onnx_encoder, torch_encoder
from models.export import INPUT_NAME, OUTPUT_NAME, ParityError, check_parity, export_onnx
from models.sasrec import SASRec
from tests.models.conftest import MAX_LEN, Dataset


@pytest.fixture(scope="module")
def student_onnx(student: SASRec) -> bytes:
    return export_onnx(student)


def test_signature_has_named_int64_input_and_dynamic_axes(
    student_onnx: bytes, student: SASRec
) -> None:
    graph = onnx.load_from_string(student_onnx).graph
    (inp,) = graph.input
    (out,) = graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert all(isinstance(d, str) for d in in_dims)  # batch and sequence are dynamic
    assert isinstance(out_dims[0], str) and out_dims[1] == student.config.dim
    assert onnx.load_from_string(student_onnx).opset_import[0].version >= 17


def test_onnx_matches_pytorch_on_real_sequences(
    student_onnx: bytes, student: SASRec, synthetic: Dataset
) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    assert check_parity(student_onnx, student, inputs) < 1e-4
    # Any batch size and any left-trimmed length.
    ort, ref = onnx_encoder(student_onnx), torch_encoder(student)
    for batch, keep in ((1, MAX_LEN), (7, 5), (33, 1)):
        x = inputs[:batch, -keep:]
        assert ort(x).shape == (batch, student.config.dim)
        np.testing.assert_allclose(ort(x), ref(x), atol=1e-4)


def test_parity_check_fails_loudly(
    student_onnx: bytes, student: SASRec, teacher: SASRec, synthetic: Dataset
) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)[:16]
    drifted = copy.deepcopy(student)
    with torch.no_grad():
        drifted.blocks[0].ffn.fc2.weight.mul_(1.05)
    with pytest.raises(ParityError, match="max abs diff"):
        check_parity(student_onnx, drifted, inputs)
    with pytest.raises(ParityError, match="shape"):
        check_parity(student_onnx, teacher, inputs)
