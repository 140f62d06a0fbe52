"""The model registry: installed versions on disk, the active model in memory, hot swap.

    <model_dir>/<version>/    one verified bundle per version (name = manifest.model_version)
    <model_dir>/.staging-*    an upload being validated; removed on failure and at start

Installing validates a bundle completely before it may become a version: archive safety
(`bundle.extract_archive`), sizes and sha256 sums, shapes and values (`bundle.read_bundle`),
the ONNX signature against the manifest, the golden outputs (`bundle.verify_golden`), a
dynamic batch axis, and one warm-up pass, then the optional accuracy and latency gates
(`service.gates`, which also lists where each mandatory gate lives). Only then is the
staging directory renamed into place, so a version directory always holds a good bundle.
Activation runs the same checks again, the gates against the model serving at that moment;
a rollback skips the optional gates (it is the operator's way back, whatever the numbers).

Activating loads and warms the new model first and only then swaps `self._current`, a single
reference assignment: requests read the reference once, so each one runs entirely on the old
or entirely on the new model and names the version that answered. Admin operations are
serialized by one lock; a failure at any step leaves the serving model untouched.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from pydantic import ValidationError

from bundle import BundleError, Manifest, extract_archive, read_bundle, verify_golden
from bundle.manifest import VERSION_PATTERN
from service.ann import build_for_catalog
from service.encoder import OnnxEncoder
from service.errors import (
    InvalidBundle,
    NothingToRollBack,
    StoreUnavailable,
    VersionExists,
    VersionNotFound,
)
from service.gates import GateConfig, check_gates
from service.runner import LoadedModel, ModelOptions
from service.scorer import Scorer
from service.store import ActiveState, ItemMatrix, Store

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
STAGING_PREFIX = ".staging-"
UPLOAD_PREFIX = ".upload-"
_VERSION_RE = re.compile(VERSION_PATTERN)

ActivateHook = Callable[[str | None, str], None]  # (previous version, new version)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    active: bool
    manifest: Manifest | None
    error: str | None = None  # why the manifest could not be read


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
    ann = build_for_catalog(
        bundle.items, bundle.item_scales, min_items=options.ann_min_items, config=options.ann
    )
    try:
        model = LoadedModel(
            manifest=m,
            encoder=encoder,
            items=bundle.items,
            scales=bundle.item_scales,
            vocab=bundle.vocab,
            popularity=bundle.popularity,
            scorer=Scorer(
                bundle.items,
                bundle.item_scales,
                precision=options.scoring_precision,
                threads=options.intra_op_threads,
                catalog_top_k=ann is None,
            ),
            ann=ann,
        )
    except ValueError as e:
        raise BundleError(str(e)) from e
    model.warm_up()
    return model


def _settle_heap() -> None:
    """Collect once, then freeze what survives (the serving model's vocabulary, index and
    arrays) out of the garbage collector's reach. Otherwise every full collection walks the
    catalog's Python objects while requests wait: a p99 spike of several ms per collection on
    a 54k-item catalog. Unfreezing first lets the previous model's cycles be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Registry:
    def __init__(
        self,
        *,
        model_dir: Path,
        store: Store,
        options: ModelOptions | None = None,
        max_unpacked_bytes: int = 1 << 30,
        on_activate: ActivateHook | None = None,
        gates: GateConfig | None = None,
    ) -> None:
        self.model_dir = model_dir
        self._store = store
        self._options = options or ModelOptions()
        self._max_unpacked = max_unpacked_bytes
        self._on_activate = on_activate
        self._gates = gates or GateConfig()
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The serving model. Read it once per request and keep the reference."""
        return self._current

    @property
    def store(self) -> Store:
        return self._store

    # --- start-up -------------------------------------------------------------------------

    def start(self, *, bootstrap: Path | None = None) -> None:
        """Come back on the active version, or install and activate `bootstrap`."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.model_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            state = self._store.get_state()
        except StoreUnavailable as e:
            log.error("cannot read the active version from the store (%s); starting without", e)
            state = ActiveState()
        if state.active is not None:
            try:
                with self._lock:
                    model = self._load_installed(state.active)
                    self._publish_items(model)
                    self._switch(model)
                log.info("serving model version %s", state.active)
                return
            except (VersionNotFound, InvalidBundle) as e:
                log.error("active version %r cannot be loaded: %s", state.active, e)
        if bootstrap is not None:
            try:
                manifest = (
                    self.install_dir(bootstrap)
                    if bootstrap.is_dir()
                    else self._install_file(bootstrap)
                )
                version = manifest.model_version
            except VersionExists as e:
                version = e.version
            try:
                self.activate(version)
            except StoreUnavailable as e:
                # Serve locally rather than not at all; readiness reports the store as down.
                log.warning("store unavailable (%s): serving %s without recording it", e, version)
                with self._lock:
                    self._switch(self._load_installed(version))
            log.info("serving bootstrap bundle %s as version %s", bootstrap, version)

    def _install_file(self, archive: Path) -> Manifest:
        try:
            f = archive.open("rb")
        except OSError as e:
            raise InvalidBundle(f"cannot open {archive}: {e}") from e
        with f:
            return self.install_archive(f)

    # --- install --------------------------------------------------------------------------

    def upload_tempfile(self) -> BinaryIO:
        """An anonymous file on the model directory's filesystem to spool an upload into."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        return cast(BinaryIO, tempfile.TemporaryFile(dir=self.model_dir, prefix=UPLOAD_PREFIX))

    def install_archive(self, src: BinaryIO) -> Manifest:
        """Validate and install a bundle .tar.gz; return its manifest."""
        return self._install(
            lambda staging: extract_archive(src, staging, max_bytes=self._max_unpacked)
        )

    def install_dir(self, src: Path) -> Manifest:
        """Validate and install a copy of the bundle directory `src`."""

        def copy(staging: Path) -> None:
            if not src.is_dir():
                raise BundleError(f"{src} is not a directory")
            for p in src.iterdir():
                if p.is_file() and not p.is_symlink():
                    shutil.copyfile(p, staging / p.name)

        return self._install(copy)

    def _install(self, fill: Callable[[Path], None]) -> Manifest:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.model_dir))
        try:
            with self._lock:
                try:
                    fill(staging)
                    self._refuse_existing(staging)  # cheap, before the expensive checks
                    model = load_model(staging, self._options)
                except BundleError as e:
                    raise InvalidBundle(str(e)) from e
                check_gates(model, serving=self._current, config=self._gates)
                target = self.model_dir / model.version
                if target.exists():
                    raise VersionExists(model.version)
                staging.rename(target)
                log.info("installed model version %s", model.version)
                return model.manifest
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _refuse_existing(self, staging: Path) -> None:
        try:
            version = Manifest.model_validate_json(
                (staging / MANIFEST_FILE).read_bytes()
            ).model_version
        except (OSError, ValidationError):
            return  # read_bundle reports it properly
        if (self.model_dir / version).exists():
            raise VersionExists(version)

    # --- list / activate / rollback -------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        current = self._current
        active = current.version if current is not None else None
        out: list[VersionInfo] = []
        if not self.model_dir.is_dir():
            return out
        for d in sorted(self.model_dir.iterdir()):
            if not d.is_dir() or not _VERSION_RE.match(d.name):
                continue
            try:
                manifest = Manifest.model_validate_json((d / MANIFEST_FILE).read_bytes())
            except (OSError, ValidationError) as e:
                out.append(VersionInfo(d.name, d.name == active, None, str(e).splitlines()[0]))
                continue
            out.append(VersionInfo(d.name, d.name == active, manifest))
        return out

    def activate(self, version: str) -> LoadedModel:
        """Load, validate and warm `version`, then make it the serving model."""
        with self._lock:
            return self._activate_locked(version)

    def rollback(self) -> LoadedModel:
        """Go back to the version that was active before the current one."""
        with self._lock:
            previous = self._store.get_state().previous
            current = self._current
            if previous is None or (current is not None and previous == current.version):
                raise NothingToRollBack()
            return self._activate_locked(previous, gated=False)

    def _activate_locked(self, version: str, *, gated: bool = True) -> LoadedModel:
        current = self._current
        if current is not None and current.version == version:
            return current
        model = self._load_installed(version)
        if gated:
            check_gates(model, serving=current, config=self._gates)
        self._publish_items(model)
        # The store first: if it cannot record the switch, this replica does not switch either.
        self._store.set_active(version, previous=current.version if current else None)
        self._switch(model)
        return model

    def _switch(self, model: LoadedModel) -> None:
        previous = self._current
        self._current = model  # the atomic swap: one reference assignment
        log.info("activated model version %s", model.version)
        _settle_heap()
        if self._on_activate is not None:
            self._on_activate(previous.version if previous else None, model.version)

    def _load_installed(self, version: str) -> LoadedModel:
        path = self.model_dir / version
        if not _VERSION_RE.match(version) or not (path / MANIFEST_FILE).is_file():
            raise VersionNotFound(version)
        try:
            model = load_model(path, self._options)
        except BundleError as e:
            raise InvalidBundle(str(e)) from e
        if model.version != version:
            raise InvalidBundle(
                f"directory {version!r} holds a bundle of version {model.version!r}"
            )
        return model

    def _publish_items(self, model: LoadedModel) -> None:
        """Cache the item matrix in the store (best effort: serving never depends on it)."""
        try:
            if not self._store.has_items(model.version):
                self._store.put_items(model.version, ItemMatrix(model.items, model.scales))
        except StoreUnavailable as e:
            log.warning("could not cache items of %s in the store: %s", model.version, e)

    def items_cached(self) -> bool | None:
        """Whether the active version's items are in the store; None when unknown."""
        current = self._current
        if current is None:
            return None
        try:
            return self._store.has_items(current.version)
        except StoreUnavailable:
            return None
