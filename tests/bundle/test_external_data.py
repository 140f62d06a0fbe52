"""model.onnx may read the item table from the bundle's own items.npy (ONNX external data).

The bundle reader does not parse ONNX. What keeps such a bundle inside its directory is
`read_bundle` (only listed, regular, sha256-verified files, plain names) together with
onnxruntime, which - given the model's path - refuses external data outside the model's
directory or beyond a file's end. These tests pin that behaviour of the installed
onnxruntime through the service's complete validation, `load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from bundle import BundleError, npy_data_offset, read_bundle
from service.loading import load_model
from tests import factories as f

SHARED = f.BundleSpec(shared_items=True, n_items=2000, dim=16)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    return f.make_bundle_dir(tmp_path / "b", SHARED)


def test_npy_data_offset_is_where_np_save_puts_the_data(tmp_path: Path) -> None:
    for array in (
        np.arange(12, dtype=np.int8).reshape(3, 4),
        np.ones((5, 7), dtype=np.float16),
        np.linspace(0, 1, 9, dtype=np.float32),
    ):
        np.save(tmp_path / "a.npy", array)
        data = (tmp_path / "a.npy").read_bytes()
        offset = npy_data_offset(array)
        assert len(data) == offset + array.nbytes
        assert data[offset:] == array.tobytes()


def test_a_shared_bundle_stores_the_item_table_once_and_loads(shared_dir: Path) -> None:
    model = onnx.load(str(shared_dir / "model.onnx"), load_external_data=False)
    external = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    b = read_bundle(shared_dir)
    assert b.item_scales is not None
    assert external == {
        "items": {
            "location": "items.npy",
            "offset": str(npy_data_offset(b.items)),
            "length": str(b.items.nbytes),
        },
        "item_scales": {
            "location": "item_scales.npy",
            "offset": str(npy_data_offset(b.item_scales)),
            "length": str(b.item_scales.nbytes),
        },
    }
    # The encoder file holds the small weights only; the table lives in items.npy alone.
    assert (shared_dir / "model.onnx").stat().st_size < 0.2 * b.items.nbytes
    loaded = load_model(shared_dir)  # golden outputs reproduced from the shared bytes
    assert loaded.version == SHARED.version


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ({"location": "../secret.bin", "offset": 0}, "escapes model directory"),
        ({"location": "/etc/hostname", "offset": 0}, "Absolute path not allowed"),
        ({"location": "not-in-bundle.npy"}, "does not exist"),
        ({"offset": 10**6}, "out of bounds"),
        ({"length": 8}, "size mismatch"),
    ],
)
def test_external_data_outside_the_bundle_files_is_refused(
    shared_dir: Path, entries: dict[str, str | int], words: str
) -> None:
    (shared_dir.parent / "secret.bin").write_bytes(bytes(1 << 20))
    f.relink_external_data(shared_dir, "items", **entries)
    read_bundle(shared_dir)  # the files themselves are consistent...
    with pytest.raises(BundleError, match="external data") as err:
        load_model(shared_dir)  # ...but onnxruntime refuses to read outside them
    assert words in str(err.value)


def test_external_data_through_a_symlink_is_refused(shared_dir: Path) -> None:
    secret = shared_dir.parent / "secret.bin"
    secret.write_bytes(bytes(1 << 20))
    (shared_dir / "link.npy").symlink_to(secret)
    f.relink_external_data(shared_dir, "items", location="link.npy", offset=0)
    with pytest.raises(BundleError, match="not listed"):
        read_bundle(shared_dir)
    manifest = json.loads((shared_dir / "manifest.json").read_text())
    manifest["files"]["link.npy"] = {"bytes": 1 << 20, "sha256": "0" * 64}
    (shared_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(shared_dir)


def test_an_unlisted_file_in_the_bundle_cannot_serve_as_external_data(shared_dir: Path) -> None:
    (shared_dir / "extra.npy").write_bytes((shared_dir / "items.npy").read_bytes())
    f.relink_external_data(shared_dir, "items", location="extra.npy")
    with pytest.raises(BundleError, match=r"not listed in the manifest: extra\.npy"):
        load_model(shared_dir)


def test_manifest_file_names_must_be_plain(shared_dir: Path) -> None:
    manifest = json.loads((shared_dir / "manifest.json").read_text())
    manifest["files"]["../secret.bin"] = {"bytes": 1, "sha256": "0" * 64}
    (shared_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain file names"):
        read_bundle(shared_dir)


def test_a_changed_shared_item_table_is_caught_by_its_checksum(shared_dir: Path) -> None:
    f.corrupt_checksum(shared_dir)
    with pytest.raises(BundleError, match=r"items\.npy does not match its sha256"):
        load_model(shared_dir)


@pytest.mark.parametrize("encoding", ["fp16", "fp32"])
def test_float_item_encodings_share_the_table_too(tmp_path: Path, encoding: str) -> None:
    path = f.make_bundle_dir(tmp_path / "b", SHARED, item_encoding=encoding)
    assert not (path / "item_scales.npy").exists()
    assert load_model(path).version == SHARED.version
