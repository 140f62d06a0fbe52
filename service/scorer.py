"""Full-catalog scoring: user vectors against the whole item matrix, best k per user.

One onnxruntime graph per loaded model does the whole job, so a batch costs one call and no
Python touches the catalog:

    scores = users @ items.T          int8 items: MatMulInteger (u8 x s8 -> int32), then
                                      float(dot) * item scale (Cast, Mul)
    scores[padding, banned] = -inf    ScatterElements (row 0 and the last group's filler too)
    top-k, two stages, exact          the max of each group of 32 items; the k best groups;
                                      the k best of their k * 32 items

The two-stage top-k is exact: an item in the true top k scores at least the k-th best score,
so its group's maximum does too, and at most k groups can reach that. It reads each score
once for the group maxima instead of a full partial sort of every row, which is what top-k
over 54k items costs otherwise (see PERFORMANCE-NOTES).

Item matrices stay compact. An int8 bundle is scored as int8 (per-item scale applied to the
int32 products); the user vectors are quantized per row (symmetric, one scale per user, so a
user's scores never depend on who else is in the batch; that positive scale cannot change a
row's order, so it multiplies only the k winners). Users get 7 bits
(-63..63 stored as 1..127 with zero point 64): onnxruntime's u8 x s8 kernel on AVX2 sums
pairs of products in 16 bits, which saturates for user bytes above 128; 127 * 127 * 2 fits.
Its s8 x s8 kernel is exact but far slower (docs/decisions/2026-12-06-int8-scoring.md).
fp16 and fp32 bundles are scored in fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

GROUP = 32  # items per group in the first top-k stage
USER_LEVELS = 63.0  # user vectors quantized to -63..63 ...
USER_ZERO = 64  # ... stored as uint8 1..127 (see the module docstring)
# From this batch size on, int8 products use the fused MatMulIntegerToFloat graph, faster at
# large batches and slower at small ones; both give bit-identical scores
# (docs/decisions/2026-12-06-int8-scoring.md).
FUSED_MIN_BATCH = 12
# Up to this width an int8 x 7-bit dot product, |sum| <= dim * 128 * 63 < 2**24, is exact in
# float32 whatever the order of the additions (reranking uses that to score with BLAS).
EXACT_F32_DIM = 2**24 // (128 * 63)


Precision = Literal["int8", "fp32"]
Rows = Sequence[int] | npt.NDArray[np.integer]  # catalog row indices


class CatalogScorer(Protocol):
    """What the request path needs from a catalog scorer: `Scorer` (dense rows) or
    `service.code_scorer.CodeScorer` (product-quantized codes)."""

    rows: int
    dim: int

    def top_k(self, users: F32, banned: Sequence[Rows], k: int) -> tuple[I64, F32]: ...

    def score(self, user: F32, rows: I64) -> F32: ...

    def score_sets(self, users: F32, row_sets: Sequence[I64]) -> list[F32]: ...

    def with_blocked(self, rows: I64) -> CatalogScorer:
        """This scorer (sharing its tables) never returning `rows` from `top_k`."""
        ...


class Scorer:
    """Scores users against the catalog: all of it (`top_k`) or chosen rows (`score`).

    Both give the same score for the same (user, item): reranking and full-catalog answers
    agree. `precision="int8"` (int8 bundles only) scores int8 x 7-bit users; "fp32" scores the
    dequantized matrix in fp32, exactly as the pipeline's evaluation does.
    """

    def __init__(
        self,
        items: npt.NDArray[Any],
        scales: F32 | None,
        *,
        precision: Precision = "int8",
        threads: int = 1,
        catalog_top_k: bool = True,
    ) -> None:
        """`catalog_top_k=False` builds no scoring graph (an ANN index answers full-catalog
        requests; only `score` is used)."""
        rows, dim = items.shape
        self.rows = rows
        self.dim = dim
        if items.dtype == np.int8 and scales is None:
            raise ValueError("an int8 item matrix needs its per-row scales")
        self.precision: Precision = (
            "int8" if items.dtype == np.int8 and precision == "int8" else "fp32"
        )
        if self.precision == "int8":
            assert scales is not None
            self._items: npt.NDArray[Any] = items
            self._scales: F32 | None = scales.astype(np.float32, copy=False)
        else:
            dense = items.astype(np.float32)
            if scales is not None:
                dense *= scales[:, None]
            self._items, self._scales = dense, None
        self._groups = -(-rows // GROUP)
        # Never returned: the padding row 0 and the rows that only fill the last group.
        self._always_banned = np.array([0, *range(rows, self._groups * GROUP)], dtype=np.int64)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session: ort.InferenceSession | None = None
        self._wide_session: ort.InferenceSession | None = None
        if catalog_top_k:
            padded = self._groups * GROUP

            def session(fused: bool) -> ort.InferenceSession:
                graph = _build_graph(self._items, self._scales, padded, fused=fused)
                return ort.InferenceSession(
                    graph.SerializeToString(),
                    sess_options=options,
                    providers=["CPUExecutionProvider"],
                )

            self._session = session(False)
            if self._scales is not None:
                self._wide_session = session(True)

    def top_k(self, users: F32, banned: Sequence[Rows], k: int) -> tuple[I64, F32]:
        """(B, dim) users, banned row indices per user -> (B, k') indices and scores, best
        first, with k' = min(k, catalog rows). Banned rows and row 0 score -inf; callers drop
        non-finite scores (only when fewer than k items are allowed)."""
        if self._session is None:
            raise RuntimeError("this scorer was built without its catalog top-k graph")
        k = min(k, self.rows)
        feeds: dict[str, Any] = {
            # padded with row 0, banned anyway
            "banned": banned_matrix(banned, lead=self._always_banned),
            "k": np.array([k], dtype=np.int64),
            "k_groups": np.array([min(k, self._groups)], dtype=np.int64),
        }
        if self._scales is not None:
            feeds["users_q"], feeds["users_scale"] = _quantize_users(users)
        else:
            feeds["users"] = np.ascontiguousarray(users, dtype=np.float32)
        session = self._session
        if self._wide_session is not None and len(users) >= FUSED_MIN_BATCH:
            session = self._wide_session
        idx, scores = session.run(["top_index", "top_score"], feeds)
        return idx, scores

    def score(self, user: F32, rows: I64) -> F32:
        """One (dim,) user against the given catalog rows -> (len(rows),) scores."""
        return self.score_sets(user[None, :], [rows])[0]

    def with_blocked(self, rows: I64) -> Scorer:
        """Shares the scoring graphs; `rows` join the rows banned for every user."""
        other = copy.copy(self)
        other._always_banned = np.concatenate([self._always_banned, rows]).astype(np.int64)
        return other

    def score_sets(self, users: F32, row_sets: Sequence[I64]) -> list[F32]:
        """Each user of (B, dim) `users` against its own catalog rows (the reranking requests
        of a batch), in one vectorized pass -> B arrays of scores."""
        if not row_sets:
            return []
        lengths = [len(r) for r in row_sets]
        rows = np.concatenate(row_sets)
        owner = np.repeat(np.arange(len(lengths)), lengths)  # the user of each scored row
        if self._scales is None:
            scores: F32 = np.einsum("ij,ij->i", self._items[rows], users[owner])
        else:
            q, scale = _quantize_users(users)
            if self.dim <= EXACT_F32_DIM:  # float32, and still the graph's int32 sums to the bit
                codes = q.astype(np.float32) - USER_ZERO
                dot = np.einsum("ij,ij->i", self._items[rows].astype(np.float32), codes[owner])
            else:
                wide = q.astype(np.int32) - USER_ZERO
                dot = np.einsum("ij,ij->i", self._items[rows].astype(np.int32), wide[owner])
                dot = dot.astype(np.float32)
            # The graph's order of operations: float(dot) * item scale, then * user scale.
            scores = dot * self._scales[rows] * scale[owner, 0]
        return np.split(scores, np.cumsum(lengths)[:-1])


def _quantize_users(users: F32) -> tuple[npt.NDArray[np.uint8], F32]:
    """Symmetric per-row 7-bit quantization: (B, dim) -> uint8 codes, (B, 1) scales."""
    peak = np.abs(users).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / USER_LEVELS, 1.0).astype(np.float32)
    codes = (np.rint(users / scale) + USER_ZERO).astype(np.uint8)
    return codes, scale


def banned_matrix(banned: Sequence[Rows], *, lead: I64 | None = None) -> I64:
    """Banned rows per user as one (B, len(lead) + the longest list) int64 matrix: `lead`
    (rows banned for everyone) first in every row, then the user's own, padded with 0."""
    fixed = 0 if lead is None else len(lead)
    most = max((len(x) for x in banned), default=0)
    out = np.zeros((len(banned), fixed + most), dtype=np.int64)
    if lead is not None:
        out[:, :fixed] = lead
    for row, rows in enumerate(banned):
        out[row, fixed : fixed + len(rows)] = rows
    return out


def _const(name: str, value: npt.NDArray[Any]) -> TensorProto:
    return numpy_helper.from_array(value, name)


def _build_graph(
    items: npt.NDArray[Any], scales: F32 | None, padded: int, *, fused: bool = False
) -> Any:
    """The catalog top-k graph: the products (`_product_nodes`), banned rows set to -inf,
    then the two-stage top k (`_top_k_nodes`)."""
    inits, inputs, nodes = _product_nodes(items, scales, padded, fused=fused)
    top_inits, top_nodes = _top_k_nodes(scaled=scales is not None)
    outputs = [
        helper.make_tensor_value_info("top_index", TensorProto.INT64, ["batch", "k"]),
        helper.make_tensor_value_info("top_score", TensorProto.FLOAT, ["batch", "k"]),
    ]
    graph = helper.make_graph(
        nodes + top_nodes, "catalog_top_k", inputs, outputs, inits + top_inits
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _product_nodes(
    items: npt.NDArray[Any], scales: F32 | None, padded: int, *, fused: bool
) -> tuple[list[TensorProto], list[Any], list[Any]]:
    """(initializers, inputs, nodes) computing `raw`, the (batch, padded) scores: int8 items
    with scales -> integer products times the item scales (one fused MatMulIntegerToFloat
    with `fused`); float items -> fp32 MatMul."""
    rows, dim = items.shape
    inits = []
    nodes = []
    inputs = [
        helper.make_tensor_value_info("banned", TensorProto.INT64, ["batch", "n_banned"]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("k_groups", TensorProto.INT64, [1]),
    ]
    if scales is not None:
        weights = np.zeros((dim, padded), dtype=np.int8)
        weights[:, :rows] = items.T
        item_scale = np.zeros(padded, dtype=np.float32)
        item_scale[:rows] = scales
        inits += [
            _const("items_t", weights),
            _const("item_scale", item_scale),
            _const("users_zero", np.array(USER_ZERO, dtype=np.uint8)),
            _const("items_zero", np.array(0, dtype=np.int8)),
        ]
        inputs += [
            helper.make_tensor_value_info("users_q", TensorProto.UINT8, ["batch", dim]),
            helper.make_tensor_value_info("users_scale", TensorProto.FLOAT, ["batch", 1]),
        ]
        # float(u_q . item_q) * item scale. The fused MatMulIntegerToFloat is slower at small
        # batches and faster at large ones (see FUSED_MIN_BATCH); the results are
        # bit-identical. The user's own scale is positive and the same for the whole row, so
        # it is applied to the k winners only (at the end).
        if fused:
            inits.append(_const("one", np.array(1.0, dtype=np.float32)))
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    ["users_q", "items_t", "one", "item_scale", "users_zero", "items_zero"],
                    ["raw"],
                    domain="com.microsoft",
                )
            )
        else:
            nodes += [
                helper.make_node(
                    "MatMulInteger", ["users_q", "items_t", "users_zero", "items_zero"], ["dot"]
                ),
                helper.make_node("Cast", ["dot"], ["dot_f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["dot_f", "item_scale"], ["raw"]),
            ]
    else:
        weights_f = np.zeros((dim, padded), dtype=np.float32)
        weights_f[:, :rows] = items.T.astype(np.float32)
        inits.append(_const("items_t", weights_f))
        inputs.append(helper.make_tensor_value_info("users", TensorProto.FLOAT, ["batch", dim]))
        nodes.append(helper.make_node("MatMul", ["users", "items_t"], ["raw"]))

    return inits, inputs, nodes


def _top_k_nodes(*, scaled: bool) -> tuple[list[TensorProto], list[Any]]:
    """(initializers, nodes) from `raw` and `banned` to `top_index` and `top_score`."""
    inits = [
        _const("group_shape", np.array([0, -1, GROUP], dtype=np.int64)),
        _const("flat_shape", np.array([0, -1], dtype=np.int64)),
        _const("group_size", np.array([GROUP], dtype=np.int64)),
        _const("in_group", np.arange(GROUP, dtype=np.int64).reshape(1, 1, GROUP)),
        _const("axis_2", np.array([2], dtype=np.int64)),
    ]
    neg_inf = helper.make_tensor("neg_inf", TensorProto.FLOAT, [1], [-np.inf])
    nodes = [
        # banned rows (padding row 0 and the tail rows included) -> -inf
        helper.make_node("Shape", ["banned"], ["banned_shape"]),
        helper.make_node("ConstantOfShape", ["banned_shape"], ["minus_inf"], value=neg_inf),
        helper.make_node("ScatterElements", ["raw", "banned", "minus_inf"], ["scores"], axis=1),
        # stage 1: the best k groups by their maximum
        helper.make_node("Reshape", ["scores", "group_shape"], ["grouped"]),
        helper.make_node("ReduceMax", ["grouped"], ["group_max"], axes=[2], keepdims=0),
        helper.make_node("TopK", ["group_max", "k_groups"], ["_gv", "best_groups"], axis=-1),
        # stage 2: the best k of those groups' items
        helper.make_node("Unsqueeze", ["best_groups", "axis_2"], ["best_groups_3"]),
        helper.make_node("Mul", ["best_groups_3", "group_size"], ["group_start"]),
        helper.make_node("Add", ["group_start", "in_group"], ["member_3"]),
        helper.make_node("Reshape", ["member_3", "flat_shape"], ["members"]),
        helper.make_node("GatherElements", ["scores", "members"], ["member_scores"], axis=1),
        helper.make_node("TopK", ["member_scores", "k"], ["best_scores", "top_member"], axis=-1),
        helper.make_node("GatherElements", ["members", "top_member"], ["top_index"], axis=1),
    ]
    if scaled:
        nodes.append(helper.make_node("Mul", ["best_scores", "users_scale"], ["top_score"]))
    else:
        nodes.append(helper.make_node("Identity", ["best_scores"], ["top_score"]))
    return inits, nodes
