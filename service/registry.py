"""The model registry: installed versions, the active model in memory, hot swap, the fleet.

The versions live in the model directory (`service.model_dir`); models are loaded by
`service.loading`. Installing validates a bundle completely before it may become a version:
archive safety (`bundle.extract_archive`), sizes and sha256 sums, shapes and values
(`bundle.read_bundle`), the ONNX signature against the manifest, the golden outputs
(`bundle.verify_golden`), a dynamic batch axis, and one warm-up pass, then the optional
accuracy and latency gates (`service.gates`, which also lists where each mandatory gate
lives). Only then is the staging directory renamed into place, so a version directory always
holds a good bundle.
Activation (and a canary's start) runs the same checks again, the gates against the model
serving at that moment; a rollback skips the optional gates (it is the operator's way back,
whatever the numbers), and so does a replica installing or following a version the fleet
already chose (the replica that chose it ran them).

Activating loads and warms the new model first and only then swaps `self._serving`, an
immutable `Serving` snapshot (the active model and an optional canary with its share of the
traffic), by a single reference assignment: requests read it once, so each one runs entirely
on one model and names the version that answered. A failure at any step leaves the serving
model untouched. After each switch the heap is settled (`_settle_heap`): the new model's
objects are frozen out of the garbage collector's full collections.

An upload leaves the model it validated loaded as the prepared model (one at most, dropped at
the next switch unless it became the serving one), so activating it on the replica it was
uploaded to does not load it again. The replica that took the upload announces it
(`prepare`) and the other replicas load it too (`prepare()`): activating it later is then a
reference swap on every replica, however busy. A replica about to activate a version it does
not hold announces it as well, so the others load it at the same time and the fleet pays for
one load, not one per replica in turn.

The model that was active before the current one stays loaded as the standby
(`ModelOptions.keep_previous`, on by default; one more model's memory): a rollback, or
activating that version again, reuses it (the optional gates still run) and every replica
following the fleet swaps to it by reference instead of loading it from disk. At most one
standby is kept; the one it replaces is freed.

Loading and validating a model (the CPU-heavy part of an install, an activation or a fleet
sync) runs on the low-priority loader thread of `service.loading.ModelLoader`.

With Redis, replicas form a fleet (`service.fleet`): an admin operation takes the fleet-wide
lock, then this registry's lock, records the new state in the store and announces it; every
other replica's subscriber then calls `sync()`, which re-reads the stored state and converges
to it, installing a version it lacks from the archive the fleet keeps (validated like an
upload). A replica that cannot load the fleet's version keeps serving what it has and says
why in `status()`. A restarted replica comes back on the stored state the same way.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from bundle import BundleError, Manifest, extract_archive, pack_bundle
from service.catalog import CatalogLayer
from service.errors import (
    AdminBusy,
    CanaryConflict,
    InvalidBundle,
    NothingToRollBack,
    StoreUnavailable,
    VersionExists,
    VersionNotFound,
)
from service.fleet import Event, Fleet, LocalFleet
from service.gates import GateConfig, check_gates
from service.loading import ModelLoader, load_model
from service.model import LoadedModel, ModelOptions
from service.model_dir import ModelDir, VersionInfo, is_version_name
from service.serving import Serving
from service.store import ActiveState, Store

log = logging.getLogger(__name__)

# Why a replica may be unable to serve a version the fleet chose (reported, never raised).
CANNOT_SERVE = (VersionNotFound, VersionExists, InvalidBundle, StoreUnavailable)

# (previous version, new version, seconds from the start of the activation to the switch)
ActivateHook = Callable[[str | None, str, float], None]
CanaryHook = Callable[[str | None, float], None]  # (canary version or None, percent)


def _settle_heap() -> None:
    """Collect the young generations, then freeze what survives (the new model's vocabulary,
    index and arrays) out of the garbage collector's reach. Otherwise every full collection
    walks the catalog's Python objects while requests wait: a p99 spike of several ms per
    collection on a 54k-item catalog.

    No full collection here: it walks the whole heap (every imported module's objects too)
    holding the GIL, about 20 ms on a 54k-item catalog, a stall of every request in flight.
    None is needed: a dropped model is freed by reference counting (a model holds no reference
    cycles; the only cyclic garbage a load leaves, a few closures of the .npy header parser,
    dies young and goes with the young generations), which `tests/service/test_registry.py`
    checks."""
    gc.collect(1)
    gc.freeze()


def _version(model: LoadedModel | None) -> str | None:
    return None if model is None else model.version


def _base(model: LoadedModel | None) -> LoadedModel | None:
    """The model as loaded from its bundle, whatever catalog layer it serves under."""
    return None if model is None else model.base


@dataclass(frozen=True)
class ReplicaStatus:
    """Where this replica stands against the fleet's stored state."""

    replica: str
    serving: str | None  # the active version this replica answers with
    canary: str | None  # the canary it answers `canary_percent` % with
    canary_percent: float
    standby: str | None  # the previous active version, kept loaded for an instant swap back
    prepared: str | None  # uploaded or announced, loaded: activating it is instant
    fleet_active: str | None  # what the store says (None when unknown)
    fleet_canary: str | None
    error: str | None  # why this replica does not serve the fleet's state
    subscriber_connected: bool | None  # None: single process, no subscriber
    catalog_revision: int  # the catalog layer this replica serves under
    heals: int  # times it wrote the fleet state back into an emptied store


class Registry:
    def __init__(
        self,
        *,
        model_dir: Path,
        store: Store,
        fleet: Fleet | None = None,
        options: ModelOptions | None = None,
        max_unpacked_bytes: int = 1 << 30,
        on_activate: ActivateHook | None = None,
        on_canary: CanaryHook | None = None,
        on_heal: Callable[[], None] | None = None,
        gates: GateConfig | None = None,
    ) -> None:
        self.model_dir = model_dir
        self._dir = ModelDir(model_dir)
        self._store = store
        self._fleet: Fleet = fleet or LocalFleet()
        self._options = options or ModelOptions()
        self._max_unpacked = max_unpacked_bytes
        self._on_activate = on_activate
        self._on_canary = on_canary
        self._gates = gates or GateConfig()
        # Serializes this replica's changes; the fleet lock (taken first) serializes replicas.
        self._lock = threading.Lock()
        self._serving = Serving()
        self._standby: LoadedModel | None = None  # the previous active model, kept loaded
        self._prepared: LoadedModel | None = None  # loaded for another replica's activation
        self._error: str | None = None
        self._catalog = CatalogLayer()  # the live catalog layer every served model is under
        self._seen = ActiveState()  # the fleet state last read: a vanished one is written back
        self._heals = 0
        self._on_heal = on_heal
        self._loader = ModelLoader(self._options.loader_nice)

    def close(self) -> None:
        """Stop the loader thread (the serving model stays usable)."""
        self._loader.close()

    def _load_model(self, path: Path) -> LoadedModel:
        """`load_model` on the loader thread (see the module docstring)."""
        return self._loader.run(load_model, path, self._options)

    @property
    def current(self) -> LoadedModel | None:
        """The active model (the canary aside). Read it once per request and keep it."""
        return self._serving.stable

    @property
    def serving(self) -> Serving:
        """The active model and the canary, one immutable snapshot."""
        return self._serving

    def model_for(self, user_id: str | None) -> LoadedModel | None:
        """The model that answers this request: the canary for its share, else the active."""
        return self._serving.pick(user_id)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def fleet(self) -> Fleet:
        return self._fleet

    # --- start-up -------------------------------------------------------------------------

    def start(self, *, bootstrap: Path | None = None) -> None:
        """Come back on the fleet's active version (and canary), installing them from the
        fleet if needed, or install and activate `bootstrap` when nothing is active."""
        self._dir.remove_stale_staging()
        try:
            state = self._store.get_state()
            self._catalog = self._store.get_catalog()
            if legacy := self._store.delete_legacy_keys():
                log.info("deleted %d item matrices earlier releases left in the store", legacy)
        except StoreUnavailable as e:
            log.error("cannot read the active version from the store (%s); starting without", e)
            state = ActiveState()
        self._seen = state
        if state.active is not None:
            with self._lock:
                self._converge_locked(state)
            if self.current is not None:
                log.info("serving model version %s", self.current.version)
                return
            log.error("active version %r cannot be loaded: %s", state.active, self._error)
            if bootstrap is not None:
                # Serve something, but never override the fleet's choice from here.
                version = self._install_bootstrap(bootstrap)
                with self._lock:
                    self._serve_locally_locked(version)
                log.warning("serving bootstrap bundle %s locally, unrecorded", version)
            return
        if bootstrap is not None:
            version = self._install_bootstrap(bootstrap)
            try:
                self._activate_bootstrap(version)
            except (StoreUnavailable, AdminBusy) as e:
                # Serve locally rather than not at all; readiness reports the store as down.
                log.warning("cannot record %s as active (%s): serving it locally", version, e)
            if self.current is None:
                with self._lock:
                    self._serve_locally_locked(version)
            current = self.current
            log.info("serving %s (bootstrap %s)", current.version if current else None, bootstrap)

    def _serve_locally_locked(self, version: str) -> None:
        """Serve `version` on this replica without recording it in the store."""
        started = time.perf_counter()
        self._set_serving_locked(Serving(stable=self._load_locked(version)), started=started)

    def _activate_bootstrap(self, version: str) -> None:
        """Activate the bootstrap version fleet-wide, unless a replica starting at the same
        time activated something first: then follow that."""
        with self._fleet.lock(f"activate {version}"), self._lock:
            state = self._store.get_state()
            if state.active is not None:
                self._converge_locked(state)
                return
            self._activate_locked(version)
            self._announce("activate", version)

    def _install_bootstrap(self, bootstrap: Path) -> str:
        try:
            manifest = (
                self.install_dir(bootstrap) if bootstrap.is_dir() else self._install_file(bootstrap)
            )
        except VersionExists as e:
            return e.version
        return manifest.model_version

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
        return self._dir.upload_tempfile()

    def install_archive(self, src: BinaryIO) -> Manifest:
        """Validate and install a bundle .tar.gz; return its manifest. With a Redis store the
        archive is also shared with the fleet (`service.fleet`)."""

        def read_back() -> bytes:
            src.seek(0)
            return src.read()

        with self._lock:
            model = self._install_locked(
                lambda staging: extract_archive(src, staging, max_bytes=self._max_unpacked),
                share=read_back,
            )
            self._prepared = model  # validating it loaded it: activating it next is instant
            self._announce("prepare", model.version)  # ... and on the other replicas too
            return model.manifest

    def install_dir(self, src: Path) -> Manifest:
        """Validate and install a copy of the bundle directory `src` (shared with the fleet
        when first activated)."""

        def copy(staging: Path) -> None:
            if not src.is_dir():
                raise BundleError(f"{src} is not a directory")
            for p in src.iterdir():
                if p.is_file() and not p.is_symlink():
                    shutil.copyfile(p, staging / p.name)

        with self._lock:
            return self._install_locked(copy).manifest

    def _install_locked(
        self,
        fill: Callable[[Path], None],
        *,
        share: Callable[[], bytes] | None = None,
        expect: str | None = None,
        gated: bool = True,
    ) -> LoadedModel:
        with self._dir.staging() as staging:
            try:
                fill(staging)
                self._dir.refuse_existing(staging)  # cheap, before the expensive checks
                model = self._load_model(staging)
            except BundleError as e:
                raise InvalidBundle(str(e)) from e
            if expect is not None and model.version != expect:
                raise InvalidBundle(f"archive of {expect!r} holds version {model.version!r}")
            if gated:  # before sharing: the fleet never holds a bundle the gates refused
                check_gates(model, serving=self.current, config=self._gates)
            self._dir.refuse_installed(model.version)  # before sharing it with the fleet
            if share is not None:
                try:
                    self._fleet.share_archive(model.version, share)
                except StoreUnavailable as e:  # activation shares it later
                    log.warning("could not share %s with the fleet yet: %s", model.version, e)
            self._dir.install(staging, model.version)
            log.info("installed model version %s", model.version)
            return model

    def _ensure_shared_locked(self, version: str) -> None:
        """Make sure the fleet can install `version` (bootstrap bundles were never uploaded)."""
        if self._fleet.has_archive(version):
            return
        with contextlib.suppress(VersionExists):  # another replica shared it meanwhile
            self._fleet.share_archive(version, lambda: pack_bundle(self.model_dir / version))

    # --- list / activate / rollback / canary ----------------------------------------------

    def versions(self) -> list[VersionInfo]:
        return self._dir.versions(_version(self.current))

    def activate(self, version: str) -> LoadedModel:
        """Load, validate and warm `version`, then make it the serving model fleet-wide.
        Ends any canary."""
        with self._fleet.lock(f"activate {version}"), self._lock:
            current = self.current
            if current is None or current.version != version:
                self._announce("prepare", version)  # the others load it meanwhile
            model = self._activate_locked(version)
            self._announce("activate", version)
        return model

    def prepare(self, version: str) -> None:
        """Load `version` because another replica is about to activate it (the fleet
        subscriber calls this), so that following the activation is a reference swap. Best
        effort: a version that cannot be loaded is logged here and reported by the `sync`
        that follows the activation, if one does. Holds at most one prepared model; the next
        switch of the serving snapshot drops it unless it became the serving one."""
        with self._lock:
            try:
                model = self._load_locked(version)
            except CANNOT_SERVE as e:
                log.warning("could not prepare version %s: %s", version, e)
                return
            warm = (self._serving.stable, self._serving.canary, self._standby)
            if all(model is not m for m in warm):
                self._prepared = model

    def rollback(self) -> LoadedModel:
        """Go back to the version that was active before the current one."""
        with self._fleet.lock("rollback"), self._lock:
            previous = self._store.get_state().previous
            current = self.current
            if previous is None or (current is not None and previous == current.version):
                raise NothingToRollBack()
            model = self._activate_locked(previous, gated=False)
            self._announce("rollback", previous)
        return model

    def start_canary(self, version: str, *, percent: float) -> Serving:
        """Serve `version` to `percent` % of the traffic, the active version to the rest."""
        if not 0 < percent < 100:
            raise CanaryConflict(f"canary_percent must be in (0, 100), got {percent:g}")
        with self._fleet.lock(f"canary {version}"), self._lock:
            stable = self.current
            if stable is None:
                raise CanaryConflict("no version is active: activate one before a canary")
            if stable.version == version:
                raise CanaryConflict(f"{version!r} is the active version; canary another one")
            model = self._load_locked(version)
            check_gates(model, serving=stable, config=self._gates)
            self._ensure_shared_locked(version)
            self._store.set_canary(version, percent=percent)
            self._set_serving_locked(Serving(stable, model, percent))
            self._error = None
            self._announce("canary", version)
        return self._serving

    def promote_canary(self) -> LoadedModel:
        """Make the canary the active version everywhere."""
        with self._fleet.lock("canary promote"), self._lock:
            canary = self._store.get_state().canary
            if canary is None:
                raise CanaryConflict("no canary is running: nothing to promote")
            model = self._activate_locked(canary)
            self._announce("activate", canary)
        return model

    def abort_canary(self) -> Serving:
        """Stop the canary: the active version serves all traffic again."""
        with self._fleet.lock("canary abort"), self._lock:
            if self._store.get_state().canary is None:
                raise CanaryConflict("no canary is running: nothing to abort")
            self._store.set_canary(None)
            self._set_serving_locked(Serving(stable=self.current))
            self._announce("canary", None)
        return self._serving

    def _activate_locked(self, version: str, *, gated: bool = True) -> LoadedModel:
        started = time.perf_counter()
        current = self.current
        if current is not None and current.version == version:
            if self._serving.canary is not None:  # activating the active version ends a canary
                self._store.set_canary(None)
                self._set_serving_locked(Serving(stable=current))
            return current
        model = self._load_locked(version)
        if gated:
            check_gates(model, serving=current, config=self._gates)
        self._ensure_shared_locked(version)
        # The store first: if it cannot record the switch, this replica does not switch either.
        self._store.set_active(version, previous=current.version if current else None)
        self._set_serving_locked(Serving(stable=model), started=started)
        self._error = None
        return self._serving.stable or model

    def _announce(self, event: Event, version: str | None) -> None:
        try:
            self._fleet.publish(event, version)
        except StoreUnavailable as e:  # recorded already: replicas catch up when they reconnect
            log.warning("could not notify the fleet of %s %s: %s", event, version, e)

    # --- following the fleet --------------------------------------------------------------

    def sync(self) -> None:
        """Converge to the fleet's stored state and catalog (the subscriber calls this on
        every change and on reconnection). A version that cannot be loaded leaves the
        serving model as it is and is reported by `status()`; nothing raises. A store that
        lost its data gets this replica's state written back (`heal`)."""
        with self._lock:  # the state is read under the lock: no older state wins a race
            state = self._read_state_locked()
            if state is None or self._vanished(state):
                vanished = state is not None
            else:
                self._converge_locked(state)
                self._follow_catalog_locked(state)
                return
        if vanished:
            self.heal()

    def poll(self) -> None:
        """The subscriber's periodic check (pub/sub misses what happens while it listens,
        such as a FLUSHALL): `sync` when the stored state differs from the last one read."""
        try:
            state = self._store.get_state()
        except StoreUnavailable:
            return  # the subscriber reports the outage
        if state != self._seen or self._vanished(state):
            self.sync()

    def _read_state_locked(self) -> ActiveState | None:
        try:
            state = self._store.get_state()
        except StoreUnavailable as e:
            log.warning("cannot read the fleet state: %s", e)
            return None
        if not state.empty:
            self._seen = state
        return state

    def _vanished(self, state: ActiveState) -> bool:
        """The store is empty although this replica read a fleet state from it before."""
        return state.empty and not self._seen.empty and self.current is not None

    def heal(self) -> bool:
        """Write what this replica holds back into a store that lost its data: the active
        and previous version, the canary, their bundle archives (then those of its other
        installed versions) and the catalog layer, then tell the fleet. One replica writes (under the fleet lock); the others find the store
        filled and follow it. True when this replica wrote."""
        with self._fleet.lock("heal"), self._lock:
            serving, seen = self._serving, self._seen
            if serving.stable is None or not self._store.get_state().empty:
                return False
            previous = self._standby.version if self._standby else seen.previous
            versions = [serving.stable.version, previous, _version(serving.canary)]
            for version in filter(None, versions):
                try:
                    self._ensure_shared_locked(version)
                except (OSError, StoreUnavailable) as e:  # the others may hold it
                    log.warning("could not share %s with the fleet again: %s", version, e)
            record = ActiveState(
                active=serving.stable.version,
                previous=previous,
                canary=_version(serving.canary),
                canary_percent=serving.canary_percent,
            )
            if not self._store.restore(record, self._catalog):
                return False
            self._seen = self._store.get_state()
            self._heals += 1
            for info in self.versions():  # the other installed versions' archives, after
                if info.version not in versions and info.manifest is not None:
                    try:
                        self._ensure_shared_locked(info.version)
                    except (OSError, StoreUnavailable) as e:
                        log.warning("could not share %s with the fleet again: %s", info.version, e)
        log.warning(
            "the fleet state was gone from the store (flushed or restarted empty); wrote back "
            "active=%s previous=%s canary=%s, catalog revision %d",
            record.active,
            record.previous,
            record.canary,
            self._catalog.revision,
        )
        if self._on_heal is not None:
            self._on_heal()
        self._announce("activate", record.active)
        return True

    # --- the live catalog -----------------------------------------------------------------

    @property
    def catalog(self) -> CatalogLayer:
        """The catalog layer this replica serves under."""
        return self._catalog

    def _follow_catalog_locked(self, state: ActiveState) -> None:
        if (state.catalog_revision or 0) == self._catalog.revision:
            return
        try:
            layer = self._store.get_catalog()
        except StoreUnavailable as e:
            log.warning("cannot read the catalog: %s", e)
            return
        self._apply_catalog_locked(layer)

    def _apply_catalog_locked(self, layer: CatalogLayer) -> None:
        """Serve every model under `layer`: one swap of the serving snapshot, no activation."""
        self._catalog = layer
        self._serving = self._live_locked(self._serving)
        log.info(
            "catalog revision %d: %d unavailable items, added vectors for %s",
            layer.revision,
            len(layer.unavailable),
            {v: len(rows) for v, rows in layer.items.items()} or "no version",
        )

    def _refresh_catalog(self) -> None:
        with self._lock:
            self._apply_catalog_locked(self._store.get_catalog())
        self._announce("catalog", None)

    def set_availability(self, ids: Sequence[str], *, available: bool) -> tuple[int, int]:
        """Mark items unavailable (or available again) fleet-wide: (changed, revision)."""
        changed, revision = self._store.set_availability(ids, available=available)
        self._refresh_catalog()
        return changed, revision

    def put_item_vectors(
        self, version: str, ids: Sequence[str], vectors: npt.NDArray[np.floating]
    ) -> tuple[int, int, int]:
        """Add or replace item vectors of `version` fleet-wide, encoded like its bundle's
        table: (added, replaced, revision). Nothing changes when one vector is invalid."""
        with self._lock:
            model = self._load_locked(version)
        rows = model.encode_vectors(ids, vectors)
        known = set(model.base.vocab).union(self._catalog.vectors_of(version))
        replaced = sum(1 for i in ids if i in known)
        revision = self._store.put_item_vectors(version, rows)
        self._refresh_catalog()
        return len(ids) - replaced, replaced, revision

    def delete_item_vectors(self, version: str) -> int:
        """Drop the added item vectors of `version` fleet-wide; the revision."""
        revision = self._store.delete_item_vectors(version)
        self._refresh_catalog()
        return revision

    def _converge_locked(self, state: ActiveState) -> None:
        started = time.perf_counter()
        serving = self._serving
        errors: list[str] = []
        stable = serving.stable
        if state.active is not None and (stable is None or stable.version != state.active):
            try:
                stable = self._load_locked(state.active)
            except CANNOT_SERVE as e:
                errors.append(f"cannot serve the active version {state.active!r}: {e}")
        canary: LoadedModel | None = None
        if state.canary is not None and stable is not None and state.canary != stable.version:
            try:
                canary = self._load_locked(state.canary)
            except CANNOT_SERVE as e:
                errors.append(f"cannot serve the canary {state.canary!r}: {e}")
        target = Serving(stable, canary, state.canary_percent if canary is not None else 0.0)
        if target != serving:  # models compare by identity: a reload is a change
            self._set_serving_locked(target, started=started)
        self._error = "; ".join(errors) or None
        if self._error:
            log.error("not following the fleet: %s", self._error)

    @property
    def fleet_error(self) -> str | None:
        """Why this replica does not serve the fleet's stored state; None when it does."""
        return self._error

    def status(self) -> ReplicaStatus:
        serving = self._serving
        error = self._error
        try:
            state: ActiveState | None = self._store.get_state()
        except StoreUnavailable as e:
            state, error = None, error or str(e)
        return ReplicaStatus(
            replica=self._fleet.replica_id,
            serving=serving.stable.version if serving.stable else None,
            canary=serving.canary.version if serving.canary else None,
            canary_percent=serving.canary_percent,
            standby=self._standby.version if self._standby else None,
            prepared=self._prepared.version if self._prepared else None,
            fleet_active=state.active if state else None,
            fleet_canary=state.canary if state else None,
            error=error,
            subscriber_connected=self._fleet.connected,
            catalog_revision=self._catalog.revision,
            heals=self._heals,
        )

    # --- models ---------------------------------------------------------------------------

    def _set_serving_locked(self, serving: Serving, *, started: float | None = None) -> None:
        """Switch to `serving` (its models under the current catalog layer); `started`
        (perf_counter) is when the operation that loaded a new active model began, for the
        activation hook's duration."""
        serving = self._live_locked(serving)
        before = self._serving
        previous = before.stable
        self._serving = serving  # the atomic swap: one reference assignment
        new_stable = _base(serving.stable) is not _base(previous)
        if new_stable:
            keep = self._options.keep_previous and previous is not None
            self._standby = previous if keep else None
        self._prepared = None
        took_s = time.perf_counter() - started if started is not None else 0.0
        _settle_heap()
        if (_base(serving.canary), serving.canary_percent) != (
            _base(before.canary),
            before.canary_percent,
        ):
            version = serving.canary.version if serving.canary else None
            log.info("canary: %s on %g%% of traffic", version, serving.canary_percent)
            if self._on_canary is not None:
                self._on_canary(version, serving.canary_percent)
        if serving.stable is not None and new_stable:
            log.info("activated model version %s in %.3fs", serving.stable.version, took_s)
            if self._on_activate is not None:
                self._on_activate(
                    previous.version if previous else None, serving.stable.version, took_s
                )

    def _live_locked(self, serving: Serving) -> Serving:
        """`serving` with each model under the current catalog layer (`service.catalog`);
        a model that holds it already is kept as it is."""
        stable, canary = (self._under_catalog(m) for m in (serving.stable, serving.canary))
        if stable is serving.stable and canary is serving.canary:
            return serving
        return Serving(stable, canary, serving.canary_percent)

    def _under_catalog(self, model: LoadedModel | None) -> LoadedModel | None:
        if model is None or model.catalog is self._catalog:
            return model
        # Merging added vectors rebuilds the scorer: off the request path's priority.
        return self._loader.run(model.with_catalog, self._catalog)

    def _load_locked(self, version: str) -> LoadedModel:
        """The model of `version`: the loaded one if it serves or stands by, else from disk,
        else installed from the fleet's archive (validated like an upload)."""
        warm = (self._serving.stable, self._serving.canary, self._standby, self._prepared)
        for model in warm:
            if model is not None and model.version == version:
                return model
        if not is_version_name(version):
            raise VersionNotFound(version)
        if self._dir.has(version):
            return self._load_installed(version)
        archive = self._fleet.fetch_archive(version)
        if archive is None:
            raise VersionNotFound(version)
        log.info("installing model version %s from the fleet", version)
        try:
            return self._install_locked(
                lambda staging: extract_archive(
                    io.BytesIO(archive), staging, max_bytes=self._max_unpacked
                ),
                expect=version,
                gated=False,  # the fleet chose it: the replica that did ran the gates
            )
        except VersionExists:  # another worker sharing this model directory was quicker
            return self._load_installed(version)

    def _load_installed(self, version: str) -> LoadedModel:
        if not self._dir.has(version):
            raise VersionNotFound(version)
        try:
            model = self._load_model(self._dir.bundle_path(version))
        except BundleError as e:
            raise InvalidBundle(str(e)) from e
        if model.version != version:
            raise InvalidBundle(
                f"directory {version!r} holds a bundle of version {model.version!r}"
            )
        return model
