"""Large synthetic catalogs with the structure of a trained one, and ANN recall against them.

    # 54,542 trained items -> 1,000,000: every new item is a trained item's vector plus noise
    python -m benchmarks.catalog grow --src benchmarks/work/amazon-beauty/bundle \\
        --dst benchmarks/work/beauty-1m --items 1000000 --noise 0.3 --seed 0
    # recall@10 of the service's ANN index against exact scoring, and µs per user row
    python -m benchmarks.catalog ann --bundle benchmarks/work/beauty-1m [--nprobe 16]
    # pq4 codes of a bundle's items grown to 1M in memory: exhaustive fast scan, the IVF index
    # over the codes (nprobe x refine) and the int8 ANN path, recall@10 and µs per row
    taskset -c 1 python -m benchmarks.catalog pq-ann --bundle DIR --m 16 32

`grow_bundle` keeps the source items (same rows, IDs, vectors and popularity) and appends
synthetic ones: row r > n_source is `x_p + e` for a uniformly drawn source row p, with
`e ~ N(0, (noise * |x_p|)^2 / dim)` per coordinate (so |e| ≈ noise * |x_p|), ID `syn<r>`
and the popularity of p. Random Gaussian vectors would be close to the worst case for any
ANN index and say little about a trained catalog (/work/shared/PERFORMANCE-NOTES.md); this
keeps the clusters and norm spread the model learnt. The manifest's `dataset.synthetic_growth`
states how the catalog was made; the source's test metrics are dropped (they were measured on
the source catalog).

The bundle's `model.onnx` looks items up in its own table: either an embedded initializer
(grown with the new float vectors) or, as the pipeline ships it, ONNX external data reading
`items.npy` / `item_scales.npy` at the .npy data offset (`models.quantize.link_item_table`).
Those references are rewritten for the new row count and offsets; the golden outputs are
recomputed with onnxruntime on the grown encoder, and the result passes `bundle.read_bundle`
and the service's `load_model`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from bundle import (
    ITEMS_FILE,
    SCALES_FILE,
    Manifest,
    PQTable,
    decode_items,
    encode_items,
    npy_data_offset,
    read_bundle,
    write_bundle,
)
from bundle.pq import PQ_BITS, PQ_MAX_CENTROIDS

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

SYNTHETIC_PREFIX = "syn"
# Extra golden sequences that use grown items, so the golden check covers the new rows.
N_GROWN_GOLDEN = 2
SCORE_CHUNK_ROWS = 16384
USER_CHUNK = 64
PQ_TRAIN_ROWS = 65536  # rows the pq-ann subcommand trains 4-bit codebooks on

Search = Callable[[F32], tuple[I64, F32]]  # users -> the 10 best rows and their scores


# --- growing a bundle ---------------------------------------------------------------------


def grow_bundle(
    src: Path,
    dst: Path,
    n_items: int,
    *,
    noise: float,
    seed: int,
    version: str | None = None,
) -> Path:
    """Write a copy of bundle `src` grown to `n_items` items into `dst`; return `dst`.

    See the module docstring for how the new items are made. `version` defaults to
    `<source version>-x<n_items>`.
    """
    source = read_bundle(src)
    m, n_src = source.manifest, source.manifest.n_items
    if n_items < n_src:
        raise ValueError(f"cannot grow {n_src} items to fewer ({n_items})")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    old = decode_items(source.items, source.item_scales)  # (n_src + 1, dim)
    n_new = n_items - n_src
    parents, new = grown_rows(old, n_new, noise=noise, rng=rng)
    matrix = np.concatenate([old, new])  # (n_items + 1, dim)
    del new

    vocab = [*source.vocab, *(f"{SYNTHETIC_PREFIX}{r}" for r in range(n_src + 1, n_items + 1))]
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"source vocabulary already uses IDs {SYNTHETIC_PREFIX}<row>")
    popularity = np.concatenate([source.popularity, source.popularity[parents]])

    stored, scales = encode_items(matrix, m.item_encoding)  # exactly what write_bundle stores
    model = onnx.load(str(source.model_path), load_external_data=False)
    grow_item_tables(model, n_src=n_src, new_rows=matrix[n_src + 1 :], stored=stored, scales=scales)
    runnable = _with_item_tables(model, stored=stored, scales=scales)
    golden_in, golden_out = _golden_pairs(runnable, m, n_items, rng)

    write_bundle(
        dst,
        model_version=version or f"{m.model_version}-x{n_items}",
        onnx_model=model.SerializeToString(),
        item_matrix=matrix,
        vocab=vocab,
        popularity=popularity,
        max_len=m.max_len,
        golden_inputs=golden_in,
        golden_outputs=golden_out,
        item_encoding=m.item_encoding,
        golden_atol=m.golden_atol,
        architecture=_grown_architecture(m.architecture, n_items),
        recipe={**m.recipe, "grown_by": "benchmarks/catalog.py grow_bundle"},
        metrics={},
        dataset={
            **m.dataset,
            "synthetic_growth": _growth_record(m, n_items, noise=noise, seed=seed),
        },
    )
    return dst


def _grown_architecture(architecture: dict[str, Any], n_items: int) -> dict[str, Any]:
    """The manifest's architecture with the model config's catalog size grown."""
    out = dict(architecture)
    config = out.get("config")
    if isinstance(config, dict) and "n_items" in config:
        out["config"] = {**config, "n_items": n_items}
    return out


def _golden_pairs(
    runnable: bytes, m: Manifest, n_items: int, rng: np.random.Generator
) -> tuple[I64, F32]:
    """The source's golden inputs plus, when the catalog grew, `N_GROWN_GOLDEN` over grown
    items (each ending on the last row, so the end of the grown table is read); the grown
    encoder's outputs for them."""
    golden_in = np.array([g.input for g in m.golden], dtype=np.int64)
    if n_items > m.n_items:
        extra = np.zeros((N_GROWN_GOLDEN, m.max_len), dtype=np.int64)
        for row in range(N_GROWN_GOLDEN):
            length = int(rng.integers(1, m.max_len + 1))
            extra[row, m.max_len - length :] = rng.integers(m.n_items + 1, n_items + 1, size=length)
            extra[row, -1] = n_items
        golden_in = np.concatenate([golden_in, extra])
    golden_out = _run(runnable, golden_in, input_name=m.onnx_input, output_name=m.onnx_output)
    return golden_in, golden_out


def _growth_record(m: Manifest, n_items: int, *, noise: float, seed: int) -> dict[str, Any]:
    """The manifest's `dataset.synthetic_growth`: how the catalog was made from `m`'s."""
    n_src = m.n_items
    return {
        "source_version": m.model_version,
        "source_n_items": n_src,
        "n_items": n_items,
        "noise": noise,
        "seed": seed,
        "notes": (
            f"rows 1..{n_src} are the source bundle's items; rows {n_src + 1}..{n_items} are "
            f"synthetic ({SYNTHETIC_PREFIX}<row>): a uniformly drawn source item's vector plus "
            f"Gaussian noise with per-coordinate sd {noise} * |x| / sqrt({m.dim}) (noise norm "
            f"~{noise:g} x the source row's norm), popularity copied from that item. The "
            "source's test metrics do not apply to this catalog and are left out."
        ),
    }


def grown_rows(old: F32, n_new: int, *, noise: float, rng: np.random.Generator) -> tuple[I64, F32]:
    """`n_new` synthetic rows grown from the float item matrix `old` (padding row 0 included)
    as the module docstring says, and the source row each was drawn from."""
    n_src, dim = old.shape[0] - 1, old.shape[1]
    parents = rng.integers(1, n_src + 1, size=n_new)
    sd = noise * np.linalg.norm(old[parents], axis=1) / math.sqrt(dim)  # (n_new,)
    new = old[parents] + rng.standard_normal((n_new, dim), dtype=np.float32) * sd[:, None]
    return parents, new.astype(np.float32)


def grow_item_tables(
    model: onnx.ModelProto,
    *,
    n_src: int,
    new_rows: F32,
    stored: npt.NDArray[np.generic],
    scales: F32 | None,
) -> None:
    """Resize, in place, every item table `model` looks items up in to the grown catalog.

    Item tables are initializers gathered from (`Gather` data input) with n_src + 1 rows.
    External ones must read the bundle's items.npy / item_scales.npy: their shape, offset and
    length are pointed at `stored` / `scales`, the arrays the grown bundle will hold. Embedded
    float ones get `new_rows` appended. Anything else raises ValueError.
    """
    g = model.graph
    gathered = {n.input[0] for n in g.node if n.op_type == "Gather"}
    linked: dict[str, npt.NDArray[Any]] = {ITEMS_FILE: stored}
    if scales is not None:
        linked[SCALES_FILE] = scales
    grown = 0
    for i, init in enumerate(g.initializer):
        if init.name not in gathered or not init.dims or init.dims[0] != n_src + 1:
            continue
        if init.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e for e in init.external_data}
            location = entries["location"].value if "location" in entries else ""
            if location not in linked:
                raise ValueError(f"item table {init.name!r} reads {location!r}, not an item file")
            array = linked[location]
            if onnx.helper.tensor_dtype_to_np_dtype(init.data_type) != array.dtype:
                raise ValueError(f"item table {init.name!r} is not {array.dtype} like {location}")
            init.dims[:] = array.shape
            for key, value in (("offset", npy_data_offset(array)), ("length", array.nbytes)):
                if key in entries:
                    entries[key].value = str(value)
                else:
                    e = init.external_data.add()
                    e.key, e.value = key, str(value)
        else:
            table = numpy_helper.to_array(init)
            if table.dtype not in (np.float32, np.float16) or table.shape[1:] != new_rows.shape[1:]:
                raise ValueError(
                    f"item table {init.name!r} is {table.dtype} {table.shape}; only float "
                    f"(rows, {new_rows.shape[1]}) tables can be grown"
                )
            bigger = np.concatenate([table, new_rows.astype(table.dtype)])
            g.initializer[i].CopyFrom(numpy_helper.from_array(bigger, init.name))
        for value_info in g.input:  # IR < 4 lists initializers as inputs too, with shapes
            if value_info.name == init.name:
                value_info.type.tensor_type.shape.dim[0].dim_value = n_src + 1 + len(new_rows)
        grown += 1
    if grown == 0:
        raise ValueError(f"model.onnx has no item table of {n_src + 1} rows to grow")
    for init in g.initializer:
        if init.data_location == TensorProto.EXTERNAL and init.dims and init.name not in gathered:
            raise ValueError(f"initializer {init.name!r} reads external data; cannot grow it")


def _with_item_tables(
    model: onnx.ModelProto, *, stored: npt.NDArray[np.generic], scales: F32 | None
) -> bytes:
    """A self-contained copy of `model`: external item tables replaced by the arrays
    themselves, so onnxruntime can run it from bytes before the bundle files exist."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    arrays: dict[str, npt.NDArray[Any]] = {ITEMS_FILE: stored}
    if scales is not None:
        arrays[SCALES_FILE] = scales
    for i, init in enumerate(copy.graph.initializer):
        if init.data_location != TensorProto.EXTERNAL:
            continue
        location = next(e.value for e in init.external_data if e.key == "location")
        if location not in arrays:
            raise ValueError(f"initializer {init.name!r} reads {location!r}")
        tensor = numpy_helper.from_array(np.ascontiguousarray(arrays[location]), init.name)
        copy.graph.initializer[i].CopyFrom(tensor)
    data: bytes = copy.SerializeToString()
    return data


def _run(model: bytes, seqs: I64, *, input_name: str, output_name: str) -> F32:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    (out,) = session.run([output_name], {input_name: seqs})
    return np.asarray(out, dtype=np.float32)


# --- recall and exact scoring -------------------------------------------------------------


def recall_at_k(approx_idx: npt.NDArray[np.integer], exact_idx: npt.NDArray[np.integer]) -> float:
    """Mean over rows of |approx ∩ exact| / |exact|, both (B, k) index arrays; -1 in
    `approx_idx` (nothing found) counts as a miss."""
    approx, exact = np.asarray(approx_idx), np.asarray(exact_idx)
    if approx.shape[0] != exact.shape[0] or exact.ndim != 2 or exact.shape[1] == 0:
        raise ValueError(f"shapes {approx.shape} and {exact.shape} do not match")
    hits = [
        len(set(a[a >= 0].tolist()) & set(e.tolist())) / len(e)
        for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits))


def tie_recall(approx_scores: npt.NDArray[np.floating], exact_scores: F32) -> float:
    """Mean over rows of the share of the k found items that score at least the exact k-th
    score, both (B, k) exact scores (-inf where nothing was found): recall@k that counts an
    item tied with the k-th as a hit. pq4 codes repeat (two items with the same codes score
    the same), and which of the tied rows an exact top k lists is a tie-break, not a miss."""
    approx, exact = np.asarray(approx_scores), np.asarray(exact_scores)
    if approx.shape != exact.shape or exact.ndim != 2 or exact.shape[1] == 0:
        raise ValueError(f"shapes {approx.shape} and {exact.shape} do not match")
    return float(np.mean(approx >= exact[:, -1:]))


def exact_top_k(users: F32, items: npt.NDArray[Any], scales: F32 | None, k: int) -> tuple[I64, F32]:
    """The service's exact scoring, (u . q_i) * s_i over rows 1.. of `items`: the k best
    (indices, scores) per user, best first. Users go USER_CHUNK at a time, so the
    (users, items) score matrix stays small even for a million items."""
    idx = np.empty((len(users), k), dtype=np.int64)
    best = np.empty((len(users), k), dtype=np.float32)
    rows = items.shape[0]
    for u0 in range(0, len(users), USER_CHUNK):
        u = users[u0 : u0 + USER_CHUNK]
        scores = np.empty((len(u), rows), dtype=np.float32)
        for start in range(0, rows, SCORE_CHUNK_ROWS):
            stop = min(start + SCORE_CHUNK_ROWS, rows)
            block = items[start:stop].astype(np.float32, copy=False)
            np.matmul(u, block.T, out=scores[:, start:stop])
        if scales is not None:
            scores *= scales
        scores[:, 0] = -np.inf  # padding
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        idx[u0 : u0 + len(u)] = top
        best[u0 : u0 + len(u)] = np.take_along_axis(scores, top, axis=1)
    return idx, best


def serving_recall(
    bundle_dir: Path,
    histories: Sequence[Sequence[str]],
    *,
    users: int = 1000,
    k: int = 10,
    seed: int = 0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """recall@k of what the service answers (its settings, from `env` over the defaults: the
    ANN index above `ann_min_items` items, exact int8 scoring below) against exact fp32
    scoring of the whole catalog, for `users` real histories (IDs outside the catalog dropped).

    Both sides rank every item (seen ones included) so the comparison is the search alone."""
    from service.ann import AnnConfig
    from service.loading import load_model
    from service.model import ModelOptions, RecRequest
    from service.settings import Settings

    values: dict[str, Any] = {key.lower(): v for key, v in (env or {}).items()}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    options = ModelOptions(
        scoring_precision=settings.scoring_precision,
        ann_min_items=settings.ann_min_items,
        ann=AnnConfig.from_settings(settings),
    )
    model = load_model(bundle_dir, options)
    b = read_bundle(bundle_dir)
    known = set(b.vocab[1:])
    usable = [kept for h in histories if (kept := [i for i in h if i in known])]
    if not usable:
        raise ValueError(f"no history has an item of {bundle_dir}'s catalog")
    rng = np.random.default_rng(seed)
    picked = [
        usable[i] for i in rng.choice(len(usable), size=min(users, len(usable)), replace=False)
    ]
    answers = model.recommend_batch(
        [RecRequest(history=h, k=k, exclude_seen=False) for h in picked]
    )
    row_of = {item: r for r, item in enumerate(b.vocab)}
    approx = np.array([[row_of[i] for i in a.item_ids] for a in answers], dtype=np.int64)
    max_len = b.manifest.max_len
    seqs = np.zeros((len(picked), max_len), dtype=np.int64)  # left-padded, like the service
    for r, h in enumerate(picked):
        rows = [row_of[i] for i in h[-max_len:]]
        seqs[r, max_len - len(rows) :] = rows
    exact, _ = exact_top_k(model.encode(seqs), b.items, b.item_scales, k)
    return {
        "recall@10" if k == 10 else f"recall@{k}": round(recall_at_k(approx, exact), 4),
        "users": len(picked),
        "search": "ann" if model.approximate else "exact int8",
    }


# --- the command line ---------------------------------------------------------------------


def _walk_histories(
    encode: Any,
    items: F32,
    popularity: I64,
    *,
    n: int,
    length: int,
    max_len: int,
    rng: np.random.Generator,
) -> I64:
    """Histories the model finds coherent: a popular first item, then each next item drawn
    from the exact top 20 for the history so far (over `items`, the source catalog)."""
    p = popularity[1:] / popularity[1:].sum()
    seqs = np.zeros((n, length), dtype=np.int64)
    seqs[:, -1] = rng.choice(len(p), size=n, p=p) + 1
    for _ in range(1, length):
        users = encode(_left_pad(seqs, max_len))
        top, _ = exact_top_k(users, items, None, 20)
        pick = top[np.arange(n), rng.integers(0, 20, size=n)]
        seqs = np.roll(seqs, -1, axis=1)
        seqs[:, -1] = pick
    return seqs


def _us_per_row(search: Callable[[F32], object], users: F32, batch: int, reps: int) -> float:
    """Median µs per user row of `search` on `reps` consecutive batches of `users`."""
    times = []
    for r in range(reps):
        start = (r * batch) % max(1, len(users) - batch)
        chunk = users[start : start + batch]
        t0 = time.perf_counter()
        search(chunk)
        times.append((time.perf_counter() - t0) / len(chunk))
    return float(np.median(times) * 1e6)


def ann_report(
    bundle_dir: Path, *, nlist: int, nprobes: Sequence[int], users: int, history: int, seed: int
) -> None:
    """Print build time, exact and ANN µs per row, and recall@10 of `service.ann.AnnIndex`
    on `bundle_dir` for two kinds of user vectors (the encoder's, on synthetic histories)."""
    import faiss

    from service.ann import AnnConfig, AnnIndex
    from service.encoder import OnnxEncoder

    faiss.omp_set_num_threads(1)
    b = read_bundle(bundle_dir)
    m = b.manifest
    n_src = int(m.dataset.get("synthetic_growth", {}).get("source_n_items", m.n_items))
    src_items = b.items[: n_src + 1]
    src_scales = None if b.item_scales is None else b.item_scales[: n_src + 1]
    encoder = OnnxEncoder(b.model_path, manifest=m)
    queries = _queries(
        encoder,
        decode_items(src_items, src_scales),
        b.popularity[: n_src + 1],
        users=users,
        history=history,
        max_len=m.max_len,
        rng=np.random.default_rng(seed),
    )
    t0 = time.perf_counter()
    index = AnnIndex(b.items, b.item_scales, AnnConfig(nlist=nlist))
    print(
        f"{m.model_version}: {m.n_items:,} items, dim {m.dim}, {m.item_encoding}; IVF "
        f"nlist {index.nlist} built in {time.perf_counter() - t0:.1f} s (1 thread)"
    )
    walk_users = queries["model-walk histories"]
    for batch in (1, 32):
        small = _us_per_row(
            partial(exact_top_k, items=src_items, scales=src_scales, k=10), walk_users, batch, 50
        )
        full = _us_per_row(
            partial(exact_top_k, items=b.items, scales=b.item_scales, k=10), walk_users, batch, 10
        )
        print(
            f"exact top-10, µs/row at batch {batch}: {n_src:,} items {small:.0f}, "
            f"{m.n_items:,} items {full:.0f}"
        )
    truth = {name: exact_top_k(u, b.items, b.item_scales, 10)[0] for name, u in queries.items()}
    for nprobe in nprobes:
        probed = index.with_nprobe(nprobe)
        line = [f"nprobe {probed.nprobe:4d}:"]
        for name, u in queries.items():
            found, _ = probed.search(u, 10)
            line.append(f"recall@10 {recall_at_k(found, truth[name]):.4f} ({name})")
        for batch in (1, 32):
            us = _us_per_row(partial(probed.search, k=10), walk_users, batch, 200 // batch + 20)
            line.append(f"{us:.0f} µs/row b{batch}")
        print("  ".join(line))


def pq_ann_report(
    bundle_dir: Path,
    *,
    items: int,
    noise: float,
    subspaces: Sequence[int],
    nprobes: Sequence[int],
    refines: Sequence[int],
    users: int,
    history: int,
    seed: int,
) -> None:
    """Print what full-catalog top 10 costs on pq4 tables of `bundle_dir`'s item vectors
    grown to `items` items (`grown_rows`, in memory), against int8 rows of the same vectors:

    - the int8 ANN path (`service.ann.AnnIndex`, the service's defaults): recall@10 against
      exact int8 scoring, µs per query at batch 1 and per row at batch 32;
    - per M in `subspaces`: `CodeScorer`'s exhaustive fast scan, and the IVF index over the
      codes (`service.code_ann.CodeAnnIndex`) for each nprobe x refine, with recall@10
      against the exact top 10 of the same codes (`CodeScorer`, which is exact).

    A pq4 bundle's own codebooks code the grown rows when its M is asked for; otherwise 4-bit
    codebooks are trained (faiss k-means, `PQ_TRAIN_ROWS` grown rows) for each M. Queries are
    the bundle's encoder on histories of its own items, as in `ann_report`."""
    import faiss

    from benchmarks.provenance import cpu_model
    from service.encoder import OnnxEncoder

    faiss.omp_set_num_threads(1)
    b = read_bundle(bundle_dir)
    m = b.manifest
    source = b.pq.decode() if b.pq is not None else decode_items(b.items, b.item_scales)
    rng = np.random.default_rng(seed)
    encoder = OnnxEncoder(b.model_path, manifest=m)
    queries = _queries(
        encoder, source, b.popularity, users=users, history=history, max_len=m.max_len, rng=rng
    )
    _, new = grown_rows(source, max(0, items - m.n_items), noise=noise, rng=rng)
    matrix = np.concatenate([source, new])
    del new
    print(
        f"{m.model_version} ({m.item_encoding}, {m.n_items:,} items) grown to "
        f"{len(matrix) - 1:,} items (noise {noise}), dim {m.dim}; {users} users per query "
        f"kind; 1 thread; {cpu_model()}"
    )
    _int8_ann_lines(matrix, queries)
    for n_sub in subspaces:
        _pq4_lines(matrix, n_sub, b.pq, queries, nprobes=nprobes, refines=refines, seed=seed)


def _report_line(
    name: str,
    top10: Search,
    queries: dict[str, F32],
    truth: dict[str, tuple[I64, F32]],
    *,
    ties: bool,
) -> None:
    """Print recall@10 per query kind (with `ties`, also `tie_recall`: the scores compare
    exactly), then µs per row at batch 1 and 32 on the model-walk queries."""
    line = [f"  {name}:"]
    for kind, u in queries.items():
        (found, found_scores), (want, want_scores) = top10(u), truth[kind]
        tied = f", ties {tie_recall(found_scores, want_scores):.4f}" if ties else ""
        line.append(f"recall@10 {recall_at_k(found, want):.4f}{tied} ({kind})")
    for batch in (1, 32):
        us = _us_per_row(top10, queries["model-walk histories"], batch, 200 // batch + 20)
        line.append(f"{us:.0f} µs/row b{batch}")
    print("  ".join(line))


def _int8_ann_lines(matrix: F32, queries: dict[str, F32]) -> None:
    """The service's int8 ANN path on int8 rows of `matrix`, against exact int8 scoring."""
    from service.ann import AnnConfig, AnnIndex

    stored, scales = encode_items(matrix, "int8")
    t0 = time.perf_counter()
    ann = AnnIndex(stored, scales, AnnConfig())
    print(
        f"int8 rows, {stored.nbytes + (scales.nbytes if scales is not None else 0):,} bytes; "
        f"IVF nlist {ann.nlist} built in {time.perf_counter() - t0:.1f} s"
    )
    truth = {kind: exact_top_k(u, stored, scales, 10) for kind, u in queries.items()}
    name = f"ANN nprobe {ann.nprobe} refine {ann.config.refine} (service defaults)"
    # fp32 against int8 arithmetic: scores do not compare exactly, so no tie recall
    _report_line(name, partial(_ann_top10, ann), queries, truth, ties=False)


def _pq4_lines(
    matrix: F32,
    n_sub: int,
    own: PQTable | None,
    queries: dict[str, F32],
    *,
    nprobes: Sequence[int],
    refines: Sequence[int],
    seed: int,
) -> None:
    """`matrix` in pq4 codes of M = `n_sub`: the exhaustive scan, then the IVF index over the
    codes at every nprobe x refine, against the scan's exact top 10."""
    from service.ann import AnnConfig
    from service.code_ann import CodeAnnIndex
    from service.code_scorer import CodeScorer

    t0 = time.perf_counter()
    table = _pq4_table(matrix, n_sub, own, seed=seed)
    origin = "the bundle's" if own is not None and own.m == n_sub else "trained"
    print(
        f"pq4 M = {n_sub}, {table.nbytes:,} bytes ({origin} codebooks, coded in "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    scorer = CodeScorer(table)
    truth = {kind: _scan_top10(scorer, u) for kind, u in queries.items()}
    _report_line("CodeScorer, exhaustive", partial(_scan_top10, scorer), queries, truth, ties=True)
    index = CodeAnnIndex(table, AnnConfig())
    print(f"  IVF over the codes: nlist {index.nlist}, built in {index.build_s:.1f} s")
    for nprobe in nprobes:
        for refine in refines:
            probed = index.with_nprobe(nprobe, refine=refine)
            name = f"nprobe {probed.nprobe:4d} refine {refine:4d}"
            _report_line(name, partial(_ann_top10, probed), queries, truth, ties=True)


def _ann_top10(index: Any, users: F32) -> tuple[I64, F32]:
    """The 10 best rows per user and their scores, from an `AnnIndex` or `CodeAnnIndex`."""
    found: tuple[I64, F32] = index.search(users, 10)
    return found


def _scan_top10(scorer: Any, users: F32) -> tuple[I64, F32]:
    """The exact 10 best rows per user and their scores from a `CodeScorer`, nothing banned."""
    found: tuple[I64, F32] = scorer.top_k(users, [()] * len(users), 10)
    return found


def _pq4_table(matrix: F32, n_sub: int, own: PQTable | None, *, seed: int) -> PQTable:
    """`matrix` coded in 4-bit PQ with M = `n_sub`: the bundle's codebooks where they have
    that M, else codebooks trained by faiss on `PQ_TRAIN_ROWS` of its rows (padding aside)."""
    import faiss

    if own is not None and own.m == n_sub:
        codebooks = own.codebooks
    else:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(matrix) - 1, size=min(PQ_TRAIN_ROWS, len(matrix) - 1)) + 1
        pq = faiss.ProductQuantizer(matrix.shape[1], n_sub, PQ_BITS)
        pq.train(np.ascontiguousarray(matrix[np.sort(rows)]))
        codebooks = faiss.vector_to_array(pq.centroids).reshape(n_sub, PQ_MAX_CENTROIDS, -1)
    codes = np.empty((len(matrix), n_sub), dtype=np.uint8)
    sub = matrix.shape[1] // n_sub
    for start in range(0, len(matrix), SCORE_CHUNK_ROWS):  # nearest centroid per subspace
        block = matrix[start : start + SCORE_CHUNK_ROWS].reshape(-1, n_sub, 1, sub)
        far = ((block - codebooks[None]) ** 2).sum(axis=3)  # (rows, M, K)
        codes[start : start + SCORE_CHUNK_ROWS] = far.argmin(axis=2)
    return PQTable.from_codes(codes, codebooks)


def _queries(
    encoder: Callable[[I64], F32],
    items: F32,
    popularity: I64,
    *,
    users: int,
    history: int,
    max_len: int,
    rng: np.random.Generator,
) -> dict[str, F32]:
    """Two kinds of user vectors, the encoder's on `users` histories of `history` items of
    `items` (the source catalog): model walks (`_walk_histories`) and uniform draws."""
    walks = _walk_histories(
        encoder, items, popularity, n=users, length=history, max_len=max_len, rng=rng
    )
    uniform = rng.integers(1, len(items), size=(users, history))
    return {
        "model-walk histories": encoder(_left_pad(walks, max_len)),
        "uniform random histories": encoder(_left_pad(uniform, max_len)),
    }


def _left_pad(seqs: I64, max_len: int) -> I64:
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    tail = seqs[:, -max_len:]
    out[:, max_len - tail.shape[1] :] = tail
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.catalog", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grow", help="grow a bundle's catalog with synthetic items")
    g.add_argument("--src", type=Path, required=True, help="source bundle directory")
    g.add_argument("--dst", type=Path, required=True, help="new bundle directory")
    g.add_argument("--items", type=int, required=True, help="catalog size after growing")
    g.add_argument("--noise", type=float, default=0.3, help="noise norm / source row norm")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--version", default=None)
    a = sub.add_parser("ann", help="recall@10 and µs/row of the ANN index on a bundle")
    a.add_argument("--bundle", type=Path, required=True)
    a.add_argument("--nlist", type=int, default=0, help="0 = round(sqrt(n_items))")
    a.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32])
    a.add_argument("--users", type=int, default=1000)
    a.add_argument("--history", type=int, default=8, help="items per synthetic history")
    a.add_argument("--seed", type=int, default=0)
    q = sub.add_parser(
        "pq-ann", help="pq4 tables of a bundle grown in memory: full scan vs IVF vs int8 ANN"
    )
    q.add_argument("--bundle", type=Path, required=True, help="pq4, int8 or float bundle")
    q.add_argument("--items", type=int, default=1_000_000, help="catalog size after growing")
    q.add_argument("--noise", type=float, default=0.3, help="noise norm / source row norm")
    q.add_argument("--m", type=int, nargs="+", default=[16, 32], help="pq4 subspaces")
    q.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    q.add_argument("--refine", type=int, nargs="+", default=[20, 50, 100])
    q.add_argument("--users", type=int, default=1000)
    q.add_argument("--history", type=int, default=8, help="items per synthetic history")
    q.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "grow":
        t0 = time.perf_counter()
        out = grow_bundle(
            args.src, args.dst, args.items, noise=args.noise, seed=args.seed, version=args.version
        )
        print(
            f"grew {args.src} to {args.items:,} items in {out} ({time.perf_counter() - t0:.1f} s)"
        )
        return 0
    if args.command == "pq-ann":
        pq_ann_report(
            args.bundle,
            items=args.items,
            noise=args.noise,
            subspaces=args.m,
            nprobes=args.nprobe,
            refines=args.refine,
            users=args.users,
            history=args.history,
            seed=args.seed,
        )
        return 0
    ann_report(
        args.bundle,
        nlist=args.nlist,
        nprobes=args.nprobe,
        users=args.users,
        history=args.history,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
