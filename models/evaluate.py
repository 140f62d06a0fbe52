"""One evaluation for every stage: full ranking over the whole catalog.

A stage is an *encoder* (int64 (B, L) left-padded -> float32 (B, d)) plus a float item
matrix (N, d) whose row 0 is padding; scores are user_vec · item_row. The same function
ranks the popularity baseline (`popularity_stage`: a constant user vector of 1 against a
one-column matrix of counts), PyTorch models (`torch_encoder`) and the served INT8 ONNX file
(`onnx_encoder` + the bundle's decoded int8 item matrix), so every number in the report is
measured the same way.

Protocol: the target is ranked against every item except padding and the items already in
the user's history (the target itself is never removed). Ties are broken by item index, like
a stable top-k. rank is 0-based; HR@K = [rank < K], NDCG@K = 1/log2(rank + 2) if rank < K,
MRR@K = 1/(rank + 1) if rank < K. Sampled metrics (target vs. 100 sampled negatives), when
asked for, are reported under keys starting with "sampled_" because they are not comparable
with full ranking (Krichene & Rendle, KDD 2020).

    metrics = evaluate(torch_encoder(model), item_matrix, split.test, max_len=50, ks=(10, 20))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

import bundle
from models.sasrec import SASRec
from models.split import EvalSet

Encoder = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]
F32 = npt.NDArray[np.float32]


def ranks_from_scores(
    scores: npt.NDArray[np.floating],
    targets: npt.NDArray[np.int64],
    histories: Sequence[npt.NDArray[np.int64]],
) -> npt.NDArray[np.int64]:
    """0-based rank of each target among non-padding, unseen items. scores: (B, N)."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    b, n = scores.shape
    rows = np.arange(b)
    t = scores[rows, targets].copy()[:, None]  # (B, 1)
    lens = np.array([len(h) for h in histories])
    if lens.sum():
        r = np.repeat(rows, lens)
        c = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        scores[r, c] = -np.inf
    scores[:, 0] = -np.inf
    scores[rows, targets] = -np.inf  # the target is not ranked against itself
    ranks = np.count_nonzero(scores > t, axis=1)
    # Ties (common for popularity) are broken by item index; only rows with ties pay for it.
    tied = np.nonzero(np.count_nonzero(scores >= t, axis=1) > ranks)[0]
    if len(tied):
        sub = scores[tied]
        before = (sub == t[tied]) & (np.arange(n)[None, :] < targets[tied, None])
        ranks[tied] += np.count_nonzero(before, axis=1)
    out: npt.NDArray[np.int64] = ranks.astype(np.int64)
    return out


def metrics_from_ranks(
    ranks: npt.NDArray[np.int64], ks: Sequence[int] = (10,), prefix: str = ""
) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"{prefix}hr@{k}"] = float(hit.mean())
        out[f"{prefix}ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        out[f"{prefix}mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
    return out


def _sample_negatives(
    rng: np.random.Generator,
    n_rows: int,
    exclude: set[int],
    n: int,
    p: npt.NDArray[np.float64] | None,
) -> npt.NDArray[np.int64]:
    out: list[int] = []
    while len(out) < n:
        draw = rng.choice(n_rows - 1, size=2 * n, p=p) + 1
        out.extend(int(x) for x in draw if int(x) not in exclude)
        exclude = exclude | set(out)
    return np.array(out[:n], dtype=np.int64)


def evaluate(
    encode: Encoder,
    item_matrix: npt.NDArray[np.floating],
    eval_set: EvalSet,
    *,
    max_len: int,
    ks: Sequence[int] = (10,),
    batch_size: int = 256,
    sampled: Literal["uniform", "popularity"] | None = None,
    n_negatives: int = 100,
    popularity: npt.NDArray[np.integer] | None = None,
    seed: int = 0,
    trim: bool = True,
) -> dict[str, float]:
    """Full-ranking HR/NDCG/MRR@K (plus sampled_* metrics when `sampled` is set).

    With `trim`, users are batched by history length and each batch's all-padding columns
    are cut off, as the service does (the encoders are left-trim invariant); this is only
    faster, the metrics are the same.
    """
    return evaluate_ranks(
        encode, item_matrix, eval_set, max_len=max_len, ks=ks, batch_size=batch_size,
        sampled=sampled, n_negatives=n_negatives, popularity=popularity, seed=seed, trim=trim,
    )[0]  # fmt: skip


def evaluate_ranks(
    encode: Encoder,
    item_matrix: npt.NDArray[np.floating],
    eval_set: EvalSet,
    *,
    max_len: int,
    ks: Sequence[int] = (10,),
    batch_size: int = 256,
    sampled: Literal["uniform", "popularity"] | None = None,
    n_negatives: int = 100,
    popularity: npt.NDArray[np.integer] | None = None,
    seed: int = 0,
    trim: bool = True,
) -> tuple[dict[str, float], npt.NDArray[np.int64]]:
    """`evaluate`'s metrics and the full-ranking rank of every user's target, in
    `eval_set` order (so two stages' ranks pair user by user)."""
    items = np.asarray(item_matrix, dtype=np.float32)
    n_rows = items.shape[0]
    order = np.arange(len(eval_set))
    if trim:
        order = np.argsort([len(h) for h in eval_set.histories], kind="stable")
        eval_set = EvalSet([eval_set.histories[i] for i in order], eval_set.targets[order])
    inputs = eval_set.inputs(max_len=max_len)
    ranks: list[npt.NDArray[np.int64]] = []
    sampled_ranks: list[int] = []
    rng = np.random.default_rng(seed)
    p: npt.NDArray[np.float64] | None = None
    if sampled == "popularity":
        if popularity is None:
            raise ValueError("popularity-sampled metrics need `popularity`")
        w = np.asarray(popularity[1:], dtype=np.float64) + 1.0
        p = w / w.sum()
    for start in range(0, len(eval_set), batch_size):
        stop = min(start + batch_size, len(eval_set))
        x = inputs[start:stop]
        if trim:
            x = x[:, max_len - max(int((x > 0).sum(1).max()), 1) :]
        users = np.asarray(encode(x), dtype=np.float32)  # (b, d)
        scores = users @ items.T  # (b, N)
        targets = eval_set.targets[start:stop]
        hist = eval_set.histories[start:stop]
        ranks.append(ranks_from_scores(scores, targets, hist))
        if sampled is not None:
            for row in range(stop - start):
                exclude = {int(targets[row]), 0, *(int(x) for x in hist[row])}
                neg = _sample_negatives(rng, n_rows, exclude, n_negatives, p)
                t = scores[row, targets[row]]
                s = scores[row, neg]
                sampled_ranks.append(int((s > t).sum() + ((s == t) & (neg < targets[row])).sum()))
    sorted_ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    out = metrics_from_ranks(sorted_ranks, ks)
    if sampled is not None:
        out.update(metrics_from_ranks(np.array(sampled_ranks), ks, prefix=f"sampled_{sampled}_"))
    in_order = np.empty_like(sorted_ranks)
    in_order[order] = sorted_ranks
    return out, in_order


def popularity_stage(popularity: npt.NDArray[np.integer]) -> tuple[Encoder, F32]:
    """The popularity baseline as (encoder, item matrix): score_i = count_i for every user."""

    def encode(seq: npt.NDArray[np.int64]) -> F32:
        return np.ones((seq.shape[0], 1), dtype=np.float32)

    return encode, np.asarray(popularity, dtype=np.float32)[:, None]


def item_array(model: SASRec) -> F32:
    """The model's (tied) item matrix as float32 numpy, row 0 = padding."""
    return np.asarray(model.item_matrix().detach().float().cpu().numpy(), dtype=np.float32)


def torch_encoder(model: torch.nn.Module) -> Encoder:
    """Wrap a model (eval mode, no grad) as a numpy encoder."""
    device = next(model.parameters()).device

    def encode(seq: npt.NDArray[np.int64]) -> F32:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(seq)).to(device))
        model.train(was_training)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    return encode


def onnx_session(model: bytes | str, *, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    for key, value in bundle.ENCODER_SESSION_CONFIG.items():
        opts.add_session_config_entry(key, value)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_encoder(model: bytes | str | ort.InferenceSession, *, threads: int = 0) -> Encoder:
    """Run an ONNX encoder (input "item_seq", output "user_vec") with onnxruntime."""
    sess = (
        model if isinstance(model, ort.InferenceSession) else onnx_session(model, threads=threads)
    )
    name = sess.get_inputs()[0].name

    def encode(seq: npt.NDArray[np.int64]) -> F32:
        out = sess.run(None, {name: np.ascontiguousarray(seq, dtype=np.int64)})[0]
        return np.asarray(out, dtype=np.float32)

    return encode


def measure_latency(
    encode: Encoder, inputs: npt.NDArray[np.int64], *, budget_s: float = 0.4
) -> dict[str, float]:
    """µs per call at batch 1 and µs per row at batch 32 (median of timed repeats).

    Run single-threaded encoders (`onnx_encoder(..., threads=1)`, or torch under
    `torch_threads(1)`) so numbers compare across stages and machines.
    """
    if len(inputs) < 32:
        inputs = np.resize(inputs, (32, inputs.shape[1]))
    out: dict[str, float] = {}
    for batch, key in ((1, "latency_us_b1"), (32, "latency_us_per_row_b32")):
        x = np.ascontiguousarray(inputs[:batch])
        encode(x)  # warm-up
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
            t0 = time.perf_counter()
            encode(x)
            times.append(time.perf_counter() - t0)
        out[key] = float(np.median(times) * 1e6 / batch)
    return out


class torch_threads:
    """Context manager: run torch with `n` intra-op threads, then restore."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.saved = torch.get_num_threads()

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)
