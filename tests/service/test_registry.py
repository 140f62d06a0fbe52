from __future__ import annotations

import gc
import io
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from bundle import BundleError, read_bundle, unpack_int4
from service.ann import AnnConfig
from service.errors import (
    CanaryConflict,
    InvalidBundle,
    NothingToRollBack,
    StoreUnavailable,
    VersionExists,
    VersionNotFound,
)
from service.loading import load_model
from service.model import ModelOptions, RecRequest
from service.registry import Registry
from service.scorer import Scorer
from service.store import ActiveState, EmbeddedStore, RedisStore
from tests import factories as f
from tests.conftest import V1, V2
from tests.factories import free_port

# kind -> (corruption, words the rejection reason must contain)
BAD_BUNDLES: dict[str, tuple[Callable[[Path, f.BundleSpec], None], str]] = {
    "bad_checksum": (lambda d, s: f.corrupt_checksum(d), "sha256"),
    "wrong_vocab_size": (lambda d, s: f.corrupt_vocab_size(d), "vocab.json has"),
    "wrong_golden": (lambda d, s: f.corrupt_golden(d), "golden outputs"),
    "renamed_onnx_input": (lambda d, s: f.corrupt_onnx_signature(d, s, kind="name"), "inputs are"),
    "float_onnx_input": (
        lambda d, s: f.corrupt_onnx_signature(d, s, kind="dtype"),
        "tensor(int64)",
    ),
    "fixed_batch_axis": (
        lambda d, s: f.corrupt_onnx_signature(d, s, kind="batch"),
        "batch axis must be dynamic",
    ),
    "nan_encoder": (lambda d, s: f.corrupt_nan_encoder(d, s), "NaN"),
    "not_onnx": (lambda d, s: f.corrupt_onnx_bytes(d), "cannot be loaded"),
}


@pytest.fixture
def calls() -> list[tuple[str | None, str]]:
    return []


@pytest.fixture
def registry(model_dir: Path, calls: list[tuple[str | None, str]]) -> Registry:
    reg = Registry(
        model_dir=model_dir,
        store=EmbeddedStore(model_dir),
        max_unpacked_bytes=1 << 20,
        on_activate=lambda prev, new, _took_s: calls.append((prev, new)),
    )
    reg.start()
    return reg


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith("."))


def test_install_archive_validates_and_installs_without_activating(registry, model_dir, v1_archive):
    manifest = registry.install_archive(io.BytesIO(v1_archive))
    assert manifest.model_version == "v1"
    assert (model_dir / "v1" / "model.onnx").is_file()
    assert registry.current is None
    assert leftovers(model_dir) == []


def test_install_rejects_an_existing_version(registry, v1_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    with pytest.raises(VersionExists, match="'v1' is already installed"):
        registry.install_archive(io.BytesIO(v1_archive))


@pytest.mark.parametrize("kind", sorted(BAD_BUNDLES))
def test_install_rejects_bad_bundle_and_removes_partial_files(
    registry, model_dir, bad_bundle_dir, kind
):
    spec = f.BundleSpec(version="bad")
    corrupt, reason = BAD_BUNDLES[kind]
    d = bad_bundle_dir(spec)
    corrupt(d, spec)
    with pytest.raises(InvalidBundle, match="bundle rejected") as err:
        registry.install_archive(io.BytesIO(f.repack(d)))
    assert reason in err.value.reason
    assert not (model_dir / "bad").exists()
    assert leftovers(model_dir) == []


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (f.traversal_archive(), "'..'"),
        (f.symlink_archive(), "is a link"),
        (f.bomb_archive(2 << 20), "more than"),
        (b"definitely not gzip", "not a valid .tar.gz"),
    ],
    ids=["path_traversal", "symlink", "gzip_bomb", "not_gzip"],
)
def test_install_rejects_unsafe_archives(registry, model_dir, archive, reason):
    before = f.tree(model_dir)
    with pytest.raises(InvalidBundle) as err:
        registry.install_archive(io.BytesIO(archive))
    assert reason in err.value.reason
    assert leftovers(model_dir) == []
    # The archive unpacks into <model_dir>/.staging-*, so a "../escaped.txt" member would
    # land in model_dir itself: its whole tree, files included, is as it was before.
    assert f.tree(model_dir) == before


def test_activate_switches_the_serving_model_and_records_the_previous(
    registry, v1_archive, v2_archive, calls
):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    assert registry.activate("v1").version == "v1"
    assert registry.activate("v2").version == "v2"
    assert registry.current is not None and registry.current.version == "v2"
    assert registry.store.get_state().previous == "v1"
    assert calls == [(None, "v1"), ("v1", "v2")]


def test_activating_the_active_version_is_a_no_op(registry, v1_archive, calls):
    registry.install_archive(io.BytesIO(v1_archive))
    first = registry.activate("v1")
    assert registry.activate("v1") is first
    assert calls == [(None, "v1")]


@pytest.mark.parametrize("version", ["v9", "../etc", ".staging-x"])
def test_activate_unknown_version_raises_not_found(registry, version):
    with pytest.raises(VersionNotFound):
        registry.activate(version)


def test_activate_rejects_bundle_with_bad_checksum_and_keeps_serving(
    registry, model_dir, v1_archive, v2_archive
):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    f.corrupt_checksum(model_dir / "v2")  # damaged on disk after install
    with pytest.raises(InvalidBundle, match="sha256"):
        registry.activate("v2")
    assert registry.current is not None and registry.current.version == "v1"
    assert registry.store.get_state().active == "v1"


def test_rollback_returns_to_the_previous_version_and_back(registry, v1_archive, v2_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    registry.activate("v2")
    assert registry.rollback().version == "v1"
    assert registry.rollback().version == "v2"  # rolling back a rollback toggles


def test_rollback_without_a_previous_version_is_refused(registry, v1_archive):
    with pytest.raises(NothingToRollBack):
        registry.rollback()
    registry.install_archive(io.BytesIO(v1_archive))
    registry.activate("v1")
    with pytest.raises(NothingToRollBack):
        registry.rollback()


def test_versions_lists_installed_manifests_with_the_active_flag(registry, v1_archive, v2_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v2")
    listed = {v.version: v for v in registry.versions()}
    assert set(listed) == {"v1", "v2"}
    assert listed["v2"].active and not listed["v1"].active
    assert listed["v1"].manifest is not None and listed["v1"].manifest.n_items == V1.n_items


def test_start_comes_back_on_the_active_version_after_a_restart(registry, model_dir, v2_archive):
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v2")
    again = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    again.start()
    assert again.current is not None and again.current.version == "v2"


def test_start_installs_and_activates_a_bootstrap_directory(model_dir, v1_dir):
    reg = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    reg.start(bootstrap=v1_dir)
    assert reg.current is not None and reg.current.version == "v1"
    # A second start finds v1 active and installed: no reinstall, no conflict.
    again = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    again.start(bootstrap=v1_dir)
    assert again.current is not None and again.current.version == "v1"


def test_start_installs_a_bootstrap_archive_even_if_already_installed(
    tmp_path, model_dir, v2_archive
):
    archive = tmp_path / "v2.tar.gz"
    archive.write_bytes(v2_archive)
    reg = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    reg.install_archive(io.BytesIO(v2_archive))
    reg.start(bootstrap=archive)
    assert reg.current is not None and reg.current.version == "v2"


def test_start_refuses_a_bad_bootstrap_bundle(model_dir, bad_bundle_dir):
    d = bad_bundle_dir(V2)
    f.corrupt_golden(d)
    reg = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    with pytest.raises(InvalidBundle, match="golden"):
        reg.start(bootstrap=d)
    assert reg.current is None


def test_start_removes_stale_staging_directories(model_dir):
    (model_dir / ".staging-crashed").mkdir(parents=True)
    Registry(model_dir=model_dir, store=EmbeddedStore(model_dir)).start()
    assert leftovers(model_dir) == []


def test_activation_writes_no_item_matrix_to_the_redis_store(
    model_dir, v1_archive, redis_url, redis_prefix
):
    store = RedisStore(redis_url, prefix=redis_prefix)
    raw = redis.Redis.from_url(redis_url)
    reg = Registry(model_dir=model_dir, store=store)
    reg.start()
    reg.install_archive(io.BytesIO(v1_archive))
    reg.activate("v1")
    keys = {k.decode() for k in raw.keys(f"{redis_prefix}:*")}
    assert keys == {f"{redis_prefix}:active"}  # the archive goes to the fleet, not the store
    store.close()
    raw.close()


def test_activate_is_refused_when_the_store_cannot_record_it(model_dir, v1_archive, v2_archive):
    embedded = EmbeddedStore(model_dir)
    reg = Registry(model_dir=model_dir, store=embedded)
    reg.start()
    reg.install_archive(io.BytesIO(v1_archive))
    reg.install_archive(io.BytesIO(v2_archive))
    reg.activate("v1")
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    reg._store = down  # the shared store goes away
    with pytest.raises(StoreUnavailable):
        reg.activate("v2")
    assert reg.current is not None and reg.current.version == "v1"
    down.close()


def test_start_serves_the_bootstrap_bundle_locally_when_redis_is_down(model_dir, v1_dir):
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    reg = Registry(model_dir=model_dir, store=down)
    reg.start(bootstrap=v1_dir)
    assert reg.current is not None and reg.current.version == "v1"
    down.close()


def test_a_bundle_sharing_its_item_table_installs_serves_and_survives_a_restart(
    tmp_path, model_dir
):
    """model.onnx reads items.npy as external data: the installed copy (staging, then renamed)
    must resolve it inside its own directory."""
    spec = f.BundleSpec(version="s1", shared_items=True)
    src = f.make_bundle_dir(tmp_path / "src", spec)
    assert "items.npy" in (src / "model.onnx").read_bytes().decode("latin-1")  # linked
    reg = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    reg.start()
    reg.install_archive(io.BytesIO(f.repack(src)))
    model = reg.activate("s1")
    rec = model.recommend(RecRequest(history=["i3", "i7"], k=5))
    assert rec.strategy == "model" and len(rec.item_ids) == 5
    assert not {"i3", "i7"} & set(rec.item_ids)
    again = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))
    again.start()
    assert again.current is not None and again.current.version == "s1"
    f.corrupt_checksum(model_dir / "s1")  # the shared table changed on disk
    with pytest.raises(BundleError, match=r"items\.npy does not match its sha256"):
        load_model(model_dir / "s1")


def test_sync_converges_to_the_stored_state(registry, model_dir, v1_archive, v2_archive, calls):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    other = Registry(model_dir=model_dir, store=EmbeddedStore(model_dir))  # another replica
    other.start()
    other.activate("v2")
    registry.sync()
    assert registry.current is not None and registry.current.version == "v2"
    assert registry.fleet_error is None
    assert calls == [(None, "v1"), ("v1", "v2")]
    registry.sync()  # nothing changed: nothing happens
    assert calls == [(None, "v1"), ("v1", "v2")]


def test_sync_keeps_serving_and_reports_a_version_it_cannot_load(registry, v1_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.activate("v1")
    registry.store.set_active("v9", previous="v1")  # recorded elsewhere, never installed here
    registry.sync()
    assert registry.current is not None and registry.current.version == "v1"
    status = registry.status()
    assert (status.serving, status.fleet_active) == ("v1", "v9")
    assert (
        status.error == "cannot serve the active version 'v9': model version 'v9' is not installed"
    )


def test_start_with_an_unloadable_active_version_serves_the_bootstrap_without_recording_it(
    model_dir, v1_dir
):
    store = EmbeddedStore(model_dir)
    store.set_active("v9", previous=None)
    reg = Registry(model_dir=model_dir, store=store)
    reg.start(bootstrap=v1_dir)
    assert reg.current is not None and reg.current.version == "v1"
    assert store.get_state().active == "v9"  # the fleet's choice is not overridden
    assert reg.fleet_error is not None and "'v9'" in reg.fleet_error


def test_a_canary_serves_its_share_and_promote_makes_it_active(registry, v1_archive, v2_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    registry.start_canary("v2", percent=25)
    assert registry.store.get_state().canary == "v2"
    picked = [registry.model_for(f"user-{i}") for i in range(400)]
    share = sum(m is not None and m.version == "v2" for m in picked) / 400
    assert 0.15 < share < 0.35
    assert registry.current is not None and registry.current.version == "v1"
    canary = registry.serving.canary
    assert registry.promote_canary() is canary  # the warm canary model, not a reload
    state = registry.store.get_state()
    assert (state.active, state.previous, state.canary) == ("v2", "v1", None)
    assert registry.serving.canary is None


def test_abort_drops_the_canary_and_activate_ends_one(registry, v1_archive, v2_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    registry.start_canary("v2", percent=50)
    registry.abort_canary()
    assert registry.serving.canary is None and registry.store.get_state().canary is None
    with pytest.raises(CanaryConflict, match="no canary is running"):
        registry.abort_canary()
    registry.start_canary("v2", percent=50)
    registry.activate("v1")  # activating the active version ends the canary too
    assert registry.serving.canary is None and registry.store.get_state().canary is None


def test_a_canary_needs_an_active_version_and_another_version(registry, v1_archive):
    registry.install_archive(io.BytesIO(v1_archive))
    with pytest.raises(CanaryConflict, match="no version is active"):
        registry.start_canary("v1", percent=10)
    registry.activate("v1")
    with pytest.raises(CanaryConflict, match="is the active version"):
        registry.start_canary("v1", percent=10)
    with pytest.raises(VersionNotFound):
        registry.start_canary("v9", percent=10)


def test_a_bootstrap_does_not_override_a_version_another_replica_activated_first(
    tmp_path, model_dir, v1_dir, v2_archive
):
    shared = EmbeddedStore(tmp_path / "shared")
    first = Registry(model_dir=tmp_path / "a", store=shared)
    first.start(bootstrap=v1_dir)

    class SeesNothingAtFirst(EmbeddedStore):
        """The state as read a moment before `first` activated v1."""

        calls = 0

        def get_state(self) -> ActiveState:
            self.calls += 1
            return ActiveState() if self.calls == 1 else super().get_state()

    archive = tmp_path / "v2.tar.gz"
    archive.write_bytes(v2_archive)
    second = Registry(model_dir=model_dir, store=SeesNothingAtFirst(tmp_path / "shared"))
    second.install_dir(v1_dir)  # it can serve v1 (no fleet archive without Redis)
    second.start(bootstrap=archive)
    assert second.current is not None and second.current.version == "v1"
    assert shared.get_state().active == "v1"


def test_the_heap_is_settled_once_per_switch_of_the_serving_snapshot(
    registry, v1_archive, v2_archive, monkeypatch
):
    settled: list[str | None] = []
    monkeypatch.setattr(
        "service.registry._settle_heap",
        lambda: settled.append(registry.serving.canary and registry.serving.canary.version),
    )
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    assert settled == []  # installing switches nothing
    registry.activate("v1")
    registry.start_canary("v2", percent=10)
    registry.abort_canary()
    registry.sync()  # nothing changed: no switch, no collection
    registry.activate("v2")
    assert settled == [None, "v2", None, None]


def test_a_dropped_model_is_freed_by_reference_counting_alone(v1_dir):
    """No reference cycle keeps a model (and its catalog arrays) alive: why a swap can skip
    the full garbage collection (`_settle_heap`)."""
    model = load_model(v1_dir)
    model.warm_up()
    gone = weakref.ref(model)
    items = weakref.ref(model.items)
    gc.disable()
    try:
        del model
        assert gone() is None and items() is None
    finally:
        gc.enable()


def test_models_load_on_one_low_priority_thread(registry, v1_archive, v2_archive, monkeypatch):
    seen: list[tuple[str, int]] = []
    real = load_model

    def spy(path, options=None):
        tid = threading.get_native_id()
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid)))
        return real(path, options)

    monkeypatch.setattr("service.registry.load_model", spy)
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert len(seen) == 3
    assert {name.split("_")[0] for name, _ in seen} == {"model-loader"}
    assert {nice for _, nice in seen} == {min(base + 10, 19)}


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []
    real = load_model

    def spy(path, options=None):
        model = real(path, options)
        loaded.append(model.version)
        return model

    monkeypatch.setattr("service.registry.load_model", spy)
    return loaded


def test_the_previous_version_stands_by_and_swapping_back_loads_nothing(
    registry, v1_archive, v2_archive, calls, monkeypatch
):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    loaded = _count_loads(monkeypatch)
    registry.activate("v1")
    assert registry.status().standby is None
    v1 = registry.current
    registry.activate("v2")
    assert registry.status().standby == "v1"
    assert registry.rollback() is v1  # the very object: no load
    assert registry.status().standby == "v2"
    registry.activate("v2")
    assert loaded == ["v1", "v2"]
    assert calls[-2:] == [("v2", "v1"), ("v1", "v2")]  # still reported as activations
    assert registry.current.version == "v2"
    assert len(registry.current.recommend(RecRequest(history=["i3", "i7"], k=5)).item_ids) == 5


def test_a_third_version_replaces_the_standby_which_is_freed(
    registry, v1_archive, v2_archive, v3_archive
):
    for archive in (v1_archive, v2_archive, v3_archive):
        registry.install_archive(io.BytesIO(archive))
    registry.activate("v1")
    gone = weakref.ref(registry.current)
    registry.activate("v2")
    registry.activate("v3")
    assert registry.status().standby == "v2"
    gc.collect()
    assert gone() is None


def test_without_keep_previous_swapping_back_loads_from_disk(
    model_dir, v1_archive, v2_archive, monkeypatch
):
    registry = Registry(
        model_dir=model_dir,
        store=EmbeddedStore(model_dir),
        options=ModelOptions(keep_previous=False),
    )
    registry.start()
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    loaded = _count_loads(monkeypatch)
    registry.activate("v1")
    registry.activate("v2")
    assert registry.status().standby is None
    registry.rollback()
    assert loaded == ["v1", "v2", "v1"]


def test_prepare_loads_the_version_another_replica_activates_so_following_it_loads_nothing(
    registry, model_dir, v1_archive, v2_archive, monkeypatch
):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.install_archive(io.BytesIO(v2_archive))
    registry.activate("v1")
    loaded = _count_loads(monkeypatch)
    registry.prepare("v2")
    assert loaded == ["v2"] and registry.current.version == "v1"  # loaded, not serving
    registry.store.set_active("v2", previous="v1")  # what the other replica records
    registry.sync()
    assert registry.current.version == "v2" and loaded == ["v2"]


def test_prepare_of_a_version_that_cannot_load_changes_nothing(registry, v1_archive, caplog):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.activate("v1")
    registry.prepare("v9")
    assert registry.current.version == "v1" and registry.status().error is None
    assert "could not prepare version v9" in caplog.text


def test_a_prepared_model_that_is_not_activated_is_dropped_at_the_next_switch(
    registry, v1_archive, v2_archive, v3_archive, monkeypatch
):
    for archive in (v1_archive, v2_archive, v3_archive):
        registry.install_archive(io.BytesIO(archive))
    registry.activate("v1")
    models: list[weakref.ref] = []
    real = load_model
    monkeypatch.setattr(
        "service.registry.load_model",
        lambda path, options=None: models.append(weakref.ref(m := real(path, options))) or m,
    )
    registry.prepare("v2")  # the other replica's activation then failed its gates
    gc.collect()
    prepared = models[0]
    assert prepared() is not None  # held while it may still be activated
    registry.activate("v3")
    gc.collect()
    assert prepared() is None and registry.status().standby == "v1"


def test_activating_the_version_just_uploaded_does_not_load_it_again(
    registry, v1_archive, v2_archive, monkeypatch
):
    registry.install_archive(io.BytesIO(v1_archive))
    registry.activate("v1")
    loaded = _count_loads(monkeypatch)
    registry.install_archive(io.BytesIO(v2_archive))
    assert registry.current.version == "v1"  # installed, not serving
    registry.activate("v2")
    assert loaded == ["v2"]  # the load that validated the upload
    rec = registry.current.recommend(RecRequest(history=["i3", "i7"], k=5))
    assert rec.model_version == "v2" and len(rec.item_ids) == 5


PQ_BIG = f.BundleSpec(version="pq-big", item_encoding="pq4", n_items=300, dim=16)


def test_a_large_pq4_catalog_is_searched_in_an_ivf_index_over_its_codes(tmp_path):
    d = f.make_bundle_dir(tmp_path / "pq", PQ_BIG)
    scanned = load_model(d)  # 300 items: below the default ann_min_items
    indexed = load_model(d, ModelOptions(ann_min_items=300, ann=AnnConfig(nlist=16).exhaustive()))
    assert indexed.approximate and not scanned.approximate
    for history in (["i5", "i9", "i2"], ["i40"], ["i1", "i2", "i3", "i4"]):
        request = RecRequest(history=history, k=10, exclude=["i7"])
        want, got = scanned.recommend(request), indexed.recommend(request)
        assert got.item_ids == want.item_ids and got.scores == want.scores
        assert not {"i7", *history} & set(got.item_ids)


def test_a_pq4_bundle_above_ann_min_items_answers_recommend(tmp_path, client_for, make_settings):
    d = f.make_bundle_dir(tmp_path / "pq", PQ_BIG)
    client = client_for(make_settings(bootstrap_bundle=d, ann_min_items=100))
    r = client.post("/recommend", json={"history": ["i1", "i2"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "pq-big" and len(body["items"]) == 5
    r = client.post("/recommend", json={"history": ["i1"], "candidates": ["i3", "i4"], "k": 5})
    assert r.status_code == 200 and len(r.json()["items"]) == 2  # reranks score the codes


INT4 = f.BundleSpec(version="q4", item_encoding="int4", n_items=300, dim=16, shared_items=True)


def test_an_int4_bundle_is_scored_exactly_as_int8_rows_of_its_unpacked_values(tmp_path):
    d = f.make_bundle_dir(tmp_path / "q4", INT4)
    stored = read_bundle(d)
    rows = unpack_int4(stored.items)
    model = load_model(d)
    assert model.items.dtype == np.int8 and (model.items == rows).all()  # unpacked once
    int8 = Scorer(rows, stored.item_scales)
    users = np.random.default_rng(0).normal(size=(40, INT4.dim)).astype(np.float32)
    banned = [[1, 2, 3 + i] for i in range(len(users))]
    for n in (1, len(users)):  # the plain and the fused int8 graphs
        got, want = (
            model.scorer.top_k(users[:n], banned[:n], 10),
            int8.top_k(users[:n], banned[:n], 10),
        )
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    candidates = [np.array([5, 9, 200], dtype=np.int64)] * len(users)
    for got, want in zip(
        model.scorer.score_sets(users, candidates), int8.score_sets(users, candidates), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    # ... and a request answers with those scores
    rec = model.recommend(RecRequest(history=["i3", "i7"], k=5))
    user = model.encode(np.array([[0] * (INT4.max_len - 2) + [3, 7]], dtype=np.int64))
    idx, scores = int8.top_k(user, [[3, 7]], 5)
    assert rec.item_ids == [f"i{i}" for i in idx[0]]
    np.testing.assert_allclose(rec.scores, scores[0], rtol=1e-6)


def test_a_large_int4_catalog_is_searched_in_the_ivf_index_over_its_unpacked_rows(tmp_path):
    d = f.make_bundle_dir(tmp_path / "q4", INT4)
    # the index rescores in fp32 with the dequantized rows: the scorer's fp32 precision
    scanned = load_model(d, ModelOptions(scoring_precision="fp32"))
    exhaustive = AnnConfig(nlist=16).exhaustive()
    indexed = load_model(d, ModelOptions(ann_min_items=300, ann=exhaustive))
    assert indexed.approximate and not scanned.approximate
    for history in (["i5", "i9", "i2"], ["i40"]):
        request = RecRequest(history=history, k=10, exclude=["i7"])
        want, got = scanned.recommend(request), indexed.recommend(request)
        assert got.item_ids == want.item_ids
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
