"""Test data made in one place: what only tests use, plus the shared factories of `testkit`
(re-exported here, so tests keep importing from `tests.factories`).

The bundles themselves (`BundleSpec`, `make_bundle_dir`, the corruption helpers), the hostile
corpus and the private Redis live in `testkit/`, because benchmarks use them too and
benchmarks never import tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx

from bundle import pack_bundle
from service.model import RecRequest
from testkit.bundles import (
    BundleSpec,
    corrupt_checksum,
    corrupt_golden,
    corrupt_nan_encoder,
    corrupt_onnx_bytes,
    corrupt_onnx_signature,
    item_ids,
    make_bundle_archive,
    make_bundle_dir,
    make_encoder_onnx,
    make_parameters,
    pq_table,
    replace_file,
)
from testkit.hostile import HostileCase, bomb_archive, hostile_corpus, tar_gz
from testkit.hostile import npy_bytes as _npy
from testkit.redis_server import RedisServer, RedisUnavailable, free_port

__all__ = [
    "BundleSpec",
    "HostileCase",
    "RedisServer",
    "RedisUnavailable",
    "_npy",
    "answered_version",
    "bomb_archive",
    "clustered_items",
    "clustered_users",
    "corrupt_checksum",
    "corrupt_golden",
    "corrupt_nan_encoder",
    "corrupt_onnx_bytes",
    "corrupt_onnx_signature",
    "corrupt_vocab_size",
    "free_port",
    "hostile_corpus",
    "item_ids",
    "make_bundle_archive",
    "make_bundle_dir",
    "make_encoder_onnx",
    "make_parameters",
    "np",
    "poll_until",
    "pq_table",
    "reference_user_vector",
    "relink_external_data",
    "repack",
    "replace_file",
    "symlink_archive",
    "traversal_archive",
    "varied_requests",
]


def clustered_items(
    n_items: int, dim: int, *, n_clusters: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (n_items + 1, dim) item matrix shaped like trained embeddings: items around
    `n_clusters` topic centres with varied norms; row 0 (padding) is zero. Also returns
    each item's cluster (-1 for row 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(n_clusters, dim))
    topic = np.concatenate([[-1], rng.integers(0, n_clusters, size=n_items)])
    items = centres[topic[1:]] + 0.6 * rng.normal(0, 1, size=(n_items, dim))
    items *= rng.lognormal(0, 0.25, size=(n_items, 1))
    return np.vstack([np.zeros((1, dim)), items]).astype(np.float32), topic


def clustered_users(
    items: np.ndarray, topic: np.ndarray, n_users: int, *, seed: int = 0
) -> np.ndarray:
    """User vectors like an encoder's: the mean of a few items of one topic, plus noise."""
    rng = np.random.default_rng(seed)
    topics = rng.choice(topic[1:], size=n_users)
    users = [items[rng.choice(np.flatnonzero(topic == t), size=5)].mean(axis=0) for t in topics]
    noisy = np.asarray(users) + 0.3 * rng.normal(0, 1, size=(n_users, items.shape[1]))
    return noisy.astype(np.float32)


def reference_user_vector(spec: BundleSpec, history_idx: list[int]) -> np.ndarray:
    """What the encoder computes for item indices `history_idx` (numpy twin of the graph)."""
    p = make_parameters(spec)
    seq = [i for i in history_idx if i > 0][-spec.max_len :]
    mean = p["E"][seq].mean(axis=0) if seq else np.zeros(spec.dim, dtype=np.float32)
    vector: np.ndarray = np.tanh(mean @ p["W"] + p["b"]).astype(np.float32)
    return vector


def varied_requests(n: int, *, n_items: int = 60, seed: int = 0) -> list[RecRequest]:
    """`n` different requests: histories of varied length (empty every 10th, unknown IDs
    mixed in), k from 1 to 24, candidates every 3rd, excluded items, exclude_seen on and off."""
    rng = np.random.default_rng(seed)
    ids = [*item_ids(n_items), "unknown-1", "unknown-2"]

    def some(low: int, high: int) -> list[str]:
        return [str(i) for i in rng.choice(ids, size=int(rng.integers(low, high)))]

    return [
        RecRequest(
            history=[] if row % 10 == 0 else some(1, 16),
            k=int(rng.integers(1, 25)),
            candidates=some(1, 20) if row % 3 == 0 else None,
            exclude=some(0, 5),
            exclude_seen=row % 2 == 0,
        )
        for row in range(n)
    ]


# --- corruption helpers only tests use ----------------------------------------------------


def corrupt_vocab_size(bundle_dir: Path) -> None:
    """One vocabulary entry too many (checksums updated)."""
    vocab = json.loads((bundle_dir / "vocab.json").read_text())
    replace_file(bundle_dir, "vocab.json", json.dumps([*vocab, "extra-item"]).encode())


def relink_external_data(bundle_dir: Path, initializer: str, **entries: str | int) -> None:
    """Point the external data of `initializer` in model.onnx elsewhere (location, offset,
    length), keeping the manifest consistent."""
    model = onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False)
    (tensor,) = [t for t in model.graph.initializer if t.name == initializer]
    for e in tensor.external_data:
        if e.key in entries:
            e.value = str(entries[e.key])
    replace_file(bundle_dir, "model.onnx", model.SerializeToString())


def traversal_archive() -> bytes:
    info = tarfile.TarInfo("../escaped.txt")
    info.size = 4
    return tar_gz([(info, b"evil")])


def symlink_archive() -> bytes:
    info = tarfile.TarInfo("model.onnx")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return tar_gz([(info, None)])


def repack(bundle_dir: Path) -> bytes:
    return pack_bundle(bundle_dir)


def answered_version(client: httpx.Client, user_id: str | None = None) -> str:
    """The model_version that answers a small /recommend (with `user_id` for a canary split)."""
    body: dict[str, Any] = {"history": ["i1", "i2"], "k": 3}
    if user_id is not None:
        body["user_id"] = user_id
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    version: str = r.json()["model_version"]
    return version


def poll_until(condition: Callable[[], bool], *, timeout_s: float = 30.0) -> bool:
    """True as soon as `condition()` is; False if it still is not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def tree(root: Path) -> dict[str, str]:
    """Everything under `root`, recursively, files included: relative path -> what it is
    (a file's sha256, a link's target, or "dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link to {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
