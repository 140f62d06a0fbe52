"""Loading a bundle directory into a served model, fully validated, on a low-priority thread.

`load_model` runs every check the request path relies on (`bundle.read_bundle`, the ONNX
signature, the golden outputs, a batch of one) and one warm-up pass. `ModelLoader` runs it
on one dedicated thread whose niceness is `ModelOptions.loader_nice`, so on a busy core the
requests being served go first and a swap does not show in their latency.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from bundle import BundleError, read_bundle, verify_golden
from service.encoder import OnnxEncoder
from service.model import LoadedModel, ModelOptions, build_scorers

log = logging.getLogger(__name__)
T = TypeVar("T")


def load_model(path: Path, options: ModelOptions | None = None) -> LoadedModel:
    """Load and fully validate the bundle directory `path`; raise BundleError otherwise."""
    options = options or ModelOptions()
    bundle = read_bundle(path)
    m = bundle.manifest
    encoder = OnnxEncoder(bundle.model_path, manifest=m, intra_op_threads=options.intra_op_threads)
    verify_golden(bundle, encoder)
    # The golden pairs run as one batch; a batch of one proves the batch axis is really dynamic.
    single = encoder(np.asarray([m.golden[0].input], dtype=np.int64))
    if single.shape != (1, m.dim):
        raise BundleError(
            f"encoder returns {single.shape} for a batch of one, expected (1, {m.dim})"
        )
    # int4 rows are unpacked once, here, and from then on served exactly like int8 rows.
    items = bundle.int8_rows() if m.item_encoding == "int4" else bundle.items
    try:
        scorer, ann = build_scorers(items, bundle.item_scales, bundle.pq, options)
        model = LoadedModel(
            manifest=m,
            encoder=encoder,
            items=items,
            scales=bundle.item_scales,
            vocab=bundle.vocab,
            popularity=bundle.popularity,
            scorer=scorer,
            ann=ann,
            pq=bundle.pq,
            options=options,
        )
    except ValueError as e:
        raise BundleError(str(e)) from e
    model.warm_up()
    return model


def lower_priority(nice: int) -> None:
    """Raise this thread's niceness by `nice` (Linux: per thread). Best effort."""
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        except OSError as e:
            log.warning("could not lower the model loader's priority: %s", e)


class ModelLoader:
    """One low-priority thread for the CPU-heavy model work: loads, catalog merges."""

    def __init__(self, nice: int) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="model-loader",
            initializer=lower_priority,
            initargs=(nice,),
        )

    def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the loader thread; its result or its exception."""
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
