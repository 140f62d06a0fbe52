from __future__ import annotations

import numpy as np
import onnx
import pytest

import bundle
from models.evaluate import evaluate, onnx_encoder
from models.export import export_onnx
from models.quantize import QuantizeConfig, quantize_onnx
from models.sasrec import SASRec
from tests.models.conftest import MAX_LEN, Dataset


@pytest.fixture(scope="module")
def fp32_and_int8(teacher: SASRec) -> tuple[bytes, bytes]:
    fp32 = export_onnx(teacher)
    return fp32, quantize_onnx(fp32)


def top10(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    scores = users @ items.T
    scores[:, 0] = -np.inf
    return np.argsort(-scores, axis=1)[:, :10]


def test_int8_file_is_smaller_and_uses_integer_kernels(fp32_and_int8: tuple[bytes, bytes]) -> None:
    fp32, int8 = fp32_and_int8
    # Weights shrink ~4x; the graph itself (node protos) does not, so the file shrinks less.
    assert weight_bytes(int8) < 0.4 * weight_bytes(fp32)
    assert len(int8) < 0.8 * len(fp32)
    graph = onnx.load_from_string(int8).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    int8_tables = [
        i
        for i in graph.initializer
        if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) == 2
    ]
    assert any(i.dims[0] == graph_items(fp32) for i in int8_tables)  # the item embedding


def weight_bytes(model: bytes) -> int:
    graph = onnx.load_from_string(model).graph
    return sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer)


def graph_items(fp32: bytes) -> int:
    (emb,) = [
        i for i in onnx.load_from_string(fp32).graph.initializer if i.name == "item_emb.weight"
    ]
    return int(emb.dims[0])


def test_int8_encoder_and_item_matrix_keep_the_top10(
    fp32_and_int8: tuple[bytes, bytes], teacher: SASRec, synthetic: Dataset
) -> None:
    fp32, int8 = fp32_and_int8
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    items = teacher.item_matrix().detach().numpy()
    stored, scales = bundle.encode_items(items, "int8")
    q_items = bundle.decode_items(stored, scales)
    ref = top10(onnx_encoder(fp32)(inputs), items)
    got = top10(onnx_encoder(int8)(inputs), q_items)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref, got, strict=True)])
    assert overlap > 0.8
    full = evaluate(onnx_encoder(fp32), items, synthetic.split.test, max_len=MAX_LEN)
    quant = evaluate(onnx_encoder(int8), q_items, synthetic.split.test, max_len=MAX_LEN)
    assert quant["ndcg@10"] > 0.9 * full["ndcg@10"]


def test_options_change_what_is_quantized(fp32_and_int8: tuple[bytes, bytes]) -> None:
    fp32, int8 = fp32_and_int8
    no_emb = quantize_onnx(fp32, QuantizeConfig(embeddings=False))
    assert len(int8) < len(no_emb) < len(fp32)
