from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import bundle
from bundle import PQTable
from bundle.shared_items import (
    ShareError,
    check_linked_bundle,
    link_item_table,
    share_item_table,
)
from models.evaluate import evaluate, onnx_encoder
from models.export import export_onnx
from models.quantize import CalibrationError, QuantizeConfig, quantize_onnx
from models.sasrec import SASRec, SASRecConfig
from models.split import pad_left
from tests.factories import pq_table
from tests.models.conftest import MAX_LEN, Dataset

DYNAMIC = QuantizeConfig(activations="dynamic")
STATIC = QuantizeConfig(activations="static")


def calibration(synthetic: Dataset) -> np.ndarray:
    return pad_left(synthetic.split.train[:256], MAX_LEN)


@pytest.fixture(scope="module")
def fp32_and_int8(teacher: SASRec) -> tuple[bytes, bytes]:
    """Dynamic INT8, whose Gather table is quantized too (what `share_item_table` replaces)."""
    fp32 = export_onnx(teacher)
    return fp32, quantize_onnx(fp32, DYNAMIC)


@pytest.fixture(scope="module")
def static_int8(teacher: SASRec, synthetic: Dataset) -> bytes:
    return quantize_onnx(export_onnx(teacher), STATIC, calibration=calibration(synthetic))


def top10(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    scores = users @ items.T
    scores[:, 0] = -np.inf
    return np.argsort(-scores, axis=1)[:, :10]


def test_static_int8_uses_fixed_point_kernels_with_calibrated_scales(
    fp32_and_int8: tuple[bytes, bytes], static_int8: bytes
) -> None:
    fp32, _ = fp32_and_int8
    # the encoder's weights shrink ~4x (its item table stays fp32 until share_item_table)
    encoder = weight_bytes(static_int8) - table_bytes(static_int8)
    assert encoder < 0.4 * (weight_bytes(fp32) - table_bytes(fp32))
    graph = onnx.load_from_string(static_int8).graph
    ops = [n.op_type for n in graph.node]
    # every weight product runs in fixed point; no scale is computed from the batch
    assert ops.count("QLinearMatMul") == len(weight_products(fp32)) > 0
    assert "DynamicQuantizeLinear" not in ops


def test_static_int8_answers_each_row_as_if_it_were_alone(
    static_int8: bytes, fp32_and_int8: tuple[bytes, bytes], synthetic: Dataset
) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    encode = onnx_encoder(static_int8, threads=1)
    together = np.concatenate([encode(inputs[i : i + 32]) for i in range(0, len(inputs), 32)])
    for row in range(len(inputs)):
        x = inputs[row : row + 1]
        np.testing.assert_array_equal(encode(x)[0], together[row])
    # ... and stays close to the fp32 encoder it came from
    fp32 = onnx_encoder(fp32_and_int8[0])(inputs)
    cos = (
        np.sum(fp32 * together, 1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(together, axis=1)
    )
    assert cos.min() > 0.99


def test_static_int8_refuses_to_run_without_calibration_histories(
    fp32_and_int8: tuple[bytes, bytes],
) -> None:
    fp32, _ = fp32_and_int8
    with pytest.raises(CalibrationError, match="calibration"):
        quantize_onnx(fp32, STATIC)
    with pytest.raises(CalibrationError, match="calibration"):
        quantize_onnx(fp32, STATIC, calibration=np.zeros((4, MAX_LEN), dtype=np.int64))


@pytest.fixture(scope="module")
def float_int8(teacher: SASRec) -> bytes:
    return quantize_onnx(export_onnx(teacher), QuantizeConfig(activations="float"))


def test_float_activations_store_int8_weights_behind_dequantize(
    fp32_and_int8: tuple[bytes, bytes], float_int8: bytes
) -> None:
    fp32, _ = fp32_and_int8
    encoder = weight_bytes(float_int8) - table_bytes(float_int8)
    assert encoder < 0.4 * (weight_bytes(fp32) - table_bytes(fp32))
    graph = onnx.load_from_string(float_int8).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DequantizeLinear") == len(weight_products(fp32)) > 0
    assert not {"DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger"} & set(ops)
    weights = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert {i.data_type for i in graph.initializer if i.name in weights} == {TensorProto.INT8}


def test_float_activations_answer_each_row_as_if_it_were_alone(
    float_int8: bytes, fp32_and_int8: tuple[bytes, bytes], synthetic: Dataset
) -> None:
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    encode = onnx_encoder(float_int8, threads=1)
    together = np.concatenate([encode(inputs[i : i + 32]) for i in range(0, len(inputs), 32)])
    alone = np.concatenate([encode(inputs[i : i + 1]) for i in range(len(inputs))])
    np.testing.assert_array_equal(alone, together)
    fp32 = onnx_encoder(fp32_and_int8[0])(inputs)
    cos = np.sum(fp32 * alone, 1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(alone, axis=1)
    assert cos.min() > 0.999  # only the weights were rounded


def test_the_session_folds_int8_weights_back_to_fp32_products(
    float_int8: bytes, tmp_path: Path
) -> None:
    """With the bundle's session settings onnxruntime dequantizes each weight once at load:
    the graph it runs has plain fp32 MatMuls, no per-call dequantize or int8 kernel."""
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    for key, value in bundle.ENCODER_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    ort.InferenceSession(float_int8, options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert "MatMul" in ops
    assert not {"DequantizeLinear", "MatMulNBits", "MatMulInteger"} & ops


def weight_products(fp32: bytes) -> list[str]:
    graph = onnx.load_from_string(fp32).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]


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


def table_bytes(model: bytes) -> int:
    (emb,) = [
        i for i in onnx.load_from_string(model).graph.initializer if i.name == "item_emb.weight"
    ]
    return int(onnx.numpy_helper.to_array(emb).nbytes)


def graph_items(fp32: bytes) -> int:
    (emb,) = [
        i for i in onnx.load_from_string(fp32).graph.initializer if i.name == "item_emb.weight"
    ]
    return int(emb.dims[0])


@pytest.mark.parametrize("activations", ["static", "dynamic", "float"])
@pytest.mark.parametrize("shared", [False, True], ids=["own_table", "shared_table"])
def test_int8_encoder_and_item_matrix_keep_the_top10(
    fp32_and_int8: tuple[bytes, bytes],
    static_int8: bytes,
    float_int8: bytes,
    teacher: SASRec,
    synthetic: Dataset,
    shared: bool,
    activations: str,
) -> None:
    fp32, int8 = fp32_and_int8
    int8 = {"static": static_int8, "float": float_int8}.get(activations, int8)
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)
    items = teacher.item_matrix().detach().numpy()
    if shared:  # what the bundle ships: the encoder looks items up in the int8 table
        int8 = share_item_table(int8, items, "int8")
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
    no_emb = quantize_onnx(fp32, QuantizeConfig(embeddings=False, activations="dynamic"))
    assert len(int8) < len(no_emb) < len(fp32)


def write(out: Path, shipped: bytes, served: bytes, items: np.ndarray, encoding: str) -> Path:
    """A bundle around `shipped` whose golden outputs come from the self-contained `served`."""
    rng = np.random.default_rng(0)
    golden = np.zeros((4, MAX_LEN), dtype=np.int64)
    golden[1:, -5:] = rng.integers(1, len(items), size=(3, 5))
    bundle.write_bundle(
        out,
        model_version="v1",
        onnx_model=shipped,
        item_matrix=items,
        vocab=["", *(f"i{i}" for i in range(1, len(items)))],
        popularity=np.ones(len(items), dtype=np.int64),
        max_len=MAX_LEN,
        golden_inputs=golden,
        golden_outputs=onnx_encoder(served)(golden),
        item_encoding=encoding,  # type: ignore[arg-type]
    )
    return out


def test_the_bundle_stores_the_tied_item_table_once(tmp_path: Path) -> None:
    # A catalog large enough that the table dominates, as on real data.
    config = SASRecConfig(
        n_items=20_000, max_len=MAX_LEN, dim=32, n_blocks=2, head_dim=8,
        n_heads=[4, 4], ffn_hidden=[64, 64], dropout=0.0,
    )  # fmt: skip
    model = SASRec(config).eval()
    items = model.item_matrix().detach().numpy()
    int8 = quantize_onnx(export_onnx(model), DYNAMIC)
    served = share_item_table(int8, items, "int8")
    shipped = link_item_table(served)
    path = write(tmp_path / "b", shipped, served, items, "int8")
    check_linked_bundle(path, served)
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    table = items.shape[0] * items.shape[1]  # int8 bytes
    assert sizes["items.npy"] - table < 1024
    # quantize_dynamic's encoder held its own copy of the table; the shipped one holds none.
    assert len(int8) - sizes["model.onnx"] > 0.95 * table
    assert sizes["model.onnx"] < 0.2 * table
    # Opened by path, as the service does, it computes what the self-contained model does.
    assert (
        bundle.verify_golden(bundle.read_bundle(path), onnx_encoder(str(path / "model.onnx")))
        == 0.0
    )


@pytest.mark.parametrize("encoding", ["int8", "fp16", "fp32"])
@pytest.mark.parametrize("embeddings", [True, False], ids=["quantized_gather", "float_gather"])
def test_shared_encoder_reads_the_bundle_items_exactly(
    fp32_and_int8: tuple[bytes, bytes],
    teacher: SASRec,
    synthetic: Dataset,
    tmp_path: Path,
    encoding: str,
    embeddings: bool,
) -> None:
    fp32, int8 = fp32_and_int8
    if not embeddings:
        int8 = quantize_onnx(fp32, QuantizeConfig(embeddings=False, activations="dynamic"))
    items = teacher.item_matrix().detach().numpy()
    served = share_item_table(int8, items, encoding)  # type: ignore[arg-type]
    graph = onnx.load_from_string(served).graph
    tables = [i.name for i in graph.initializer if len(i.dims) == 2 and i.dims[0] == len(items)]
    assert tables == ["items"]  # the displaced table is gone
    assert not {"DequantizeLinear"} & {n.op_type for n in graph.node if "items" in n.input}
    path = write(tmp_path / "b", link_item_table(served), served, items, encoding)
    check_linked_bundle(path, served)
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)[:64]
    from_path = onnx_encoder(str(path / "model.onnx"))(inputs)
    np.testing.assert_array_equal(from_path, onnx_encoder(served)(inputs))
    # The lookup is exactly the decoded bundle matrix: float lookups match fp32 closely.
    if encoding != "int8":
        assert (
            np.abs(
                from_path
                - onnx_encoder(
                    quantize_onnx(fp32, QuantizeConfig(embeddings=False, activations="dynamic"))
                )(inputs)
            ).max()
            < 0.05
        )


def test_a_bundle_written_from_another_matrix_is_caught(
    fp32_and_int8: tuple[bytes, bytes], teacher: SASRec, tmp_path: Path
) -> None:
    _, int8 = fp32_and_int8
    items = teacher.item_matrix().detach().numpy()
    served = share_item_table(int8, items, "int8")
    other = items.copy()
    other[5] *= -1
    path = write(tmp_path / "b", link_item_table(served), served, other, "int8")
    with pytest.raises(ShareError, match="differs"):
        check_linked_bundle(path, served)


def test_sharing_refuses_a_table_of_another_shape(
    fp32_and_int8: tuple[bytes, bytes], teacher: SASRec
) -> None:
    _, int8 = fp32_and_int8
    items = teacher.item_matrix().detach().numpy()
    with pytest.raises(ShareError, match="item table"):
        share_item_table(int8, items[:-1], "int8")
    with pytest.raises(ShareError, match="already"):
        share_item_table(share_item_table(int8, items, "int8"), items, "int8")


def test_a_pq4_encoder_looks_items_up_in_the_codes_and_codebooks_it_ships(
    teacher: SASRec, synthetic: Dataset, tmp_path: Path
) -> None:
    """The encoder's input embedding from packed 4-bit codes equals the decoded table's, and
    the bundle stores the codes and codebooks once (the encoder reads them from the files)."""
    items = teacher.item_matrix().detach().numpy()
    table = pq_table(items, m=8)
    served = share_item_table(export_onnx(teacher), table, "pq4")
    decoded = copy.deepcopy(teacher)
    with torch.no_grad():
        decoded.item_emb.weight.copy_(torch.from_numpy(table.decode()))
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)[:64]
    want = onnx_encoder(export_onnx(decoded))(inputs)
    np.testing.assert_allclose(onnx_encoder(served)(inputs), want, rtol=1e-4, atol=1e-5)
    path = write_pq(tmp_path / "b", link_item_table(served), served, table)
    check_linked_bundle(path, served)
    from_path = onnx_encoder(str(path / "model.onnx"))(inputs)
    np.testing.assert_array_equal(from_path, onnx_encoder(served)(inputs))
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    # codes and codebooks live outside (the links themselves cost a few dozen bytes each)
    assert len(served) - sizes["model.onnx"] >= table.nbytes - 256


def write_pq(out: Path, shipped: bytes, served: bytes, table: PQTable) -> Path:
    golden = np.zeros((4, MAX_LEN), dtype=np.int64)
    golden[1:, -5:] = np.random.default_rng(0).integers(1, table.rows, size=(3, 5))
    bundle.write_bundle(
        out,
        model_version="v1",
        onnx_model=shipped,
        item_matrix=table,
        vocab=["", *(f"i{i}" for i in range(1, table.rows))],
        popularity=np.ones(table.rows, dtype=np.int64),
        max_len=MAX_LEN,
        golden_inputs=golden,
        golden_outputs=onnx_encoder(served)(golden),
        item_encoding="pq4",
    )
    return out


def lookup_only(table: np.ndarray) -> bytes:
    """An encoder that is nothing but its item-embedding lookup: item_seq (B, T) -> (B, T, dim)."""
    dim = table.shape[1]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["E", "item_seq"], ["user_vec"])],
        "lookup",
        [onnx.helper.make_tensor_value_info("item_seq", onnx.TensorProto.INT64, ["b", "t"])],
        [onnx.helper.make_tensor_value_info("user_vec", onnx.TensorProto.FLOAT, ["b", "t", dim])],
        [onnx.numpy_helper.from_array(table.astype(np.float32), "E")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return model.SerializeToString()


def test_an_int4_lookup_is_exactly_the_decoded_int4_table() -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_t(3, size=(40, 12)).astype(np.float32)
    table[0] = 0
    served = share_item_table(lookup_only(table), table, "int4")
    ops = [n.op_type for n in onnx.load_from_string(served).graph.node]
    assert ops.count("Gather") == 2 and {"Mod", "Div", "Sub", "Cast", "Mul"} <= set(ops)
    stored, scales = bundle.encode_items(table, "int4")
    assert set(bundle.unpack_int4(stored).ravel()) == set(range(-8, 8))  # every 4-bit value
    seqs = np.concatenate([np.arange(40), rng.integers(0, 40, size=30)]).reshape(10, 7)
    got = onnx_encoder(served)(seqs)  # (10, 7, 12)
    np.testing.assert_array_equal(got, bundle.decode_items(stored, scales)[seqs])


def test_an_int4_encoder_ships_half_the_table_bytes_and_reads_them_from_the_bundle(
    teacher: SASRec, synthetic: Dataset, tmp_path: Path
) -> None:
    items = teacher.item_matrix().detach().numpy()
    served = share_item_table(export_onnx(teacher), items, "int4")
    decoded = copy.deepcopy(teacher)
    with torch.no_grad():
        stored, scales = bundle.encode_items(items, "int4")
        decoded.item_emb.weight.copy_(torch.from_numpy(bundle.decode_items(stored, scales)))
    inputs = synthetic.split.test.inputs(max_len=MAX_LEN)[:64]
    want = onnx_encoder(export_onnx(decoded))(inputs)
    np.testing.assert_allclose(onnx_encoder(served)(inputs), want, rtol=1e-4, atol=1e-5)
    path = write(tmp_path / "b", link_item_table(served), served, items, "int4")
    check_linked_bundle(path, served)
    np.testing.assert_array_equal(
        onnx_encoder(str(path / "model.onnx"))(inputs), onnx_encoder(served)(inputs)
    )
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    assert sizes["items.npy"] - bundle.npy_data_offset(stored) == items.size // 2  # dim / 2 a row
    assert len(served) - sizes["model.onnx"] >= items.size // 2 + 4 * len(items) - 256
