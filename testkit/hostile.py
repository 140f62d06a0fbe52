"""The hostile corpus: one malicious or unacceptable bundle per gate the service enforces,
and the archive builders it is made with. Shared by tests/service/test_hostile_bundles.py and
`benchmarks.hostile` (which throws the corpus at a running fleet).

    from testkit.hostile import hostile_corpus
    for case in hostile_corpus(tmp_path / "corpus"):
        ...  # upload case.archive, expect a refusal containing case.reason
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundle import pack_bundle
from testkit.bundles import (
    BundleSpec,
    corrupt_checksum,
    corrupt_golden,
    corrupt_nan_encoder,
    corrupt_onnx_bytes,
    corrupt_onnx_signature,
    make_bundle_dir,
    read_manifest,
    replace_file,
    write_manifest,
)


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def bomb_archive(unpacked_bytes: int) -> bytes:
    """A tiny .tar.gz that unpacks to `unpacked_bytes` of zeros."""
    info = tarfile.TarInfo("items.npy")
    info.size = unpacked_bytes
    return tar_gz([(info, bytes(unpacked_bytes))])


@dataclass(frozen=True)
class HostileCase:
    """A .tar.gz the service must refuse, and the text its refusal must contain.

    `gate` is "mandatory" (always enforced), or "accuracy" / "latency" (refused only when the
    service has GATE_MAX_NDCG_DROP / GATE_MAX_LATENCY_MS set)."""

    name: str
    archive: bytes
    reason: str
    gate: str = "mandatory"


# Extra layers of the latency-gate case: measured 45-50 ms per batch-1 call for 192 of them
# on an unloaded 2-core AMD EPYC (cache-bound), so 512 stay well over the limits the tests
# and bench-swap set (30-50 ms, GATE_MAX_LATENCY_MS) on a fast day too.
SLOW_LAYERS = 512


def member(
    name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "manifest.json"
    return info, None


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_shape_bomb(real: np.ndarray, rows: int = 10**12) -> bytes:
    """A .npy whose header claims `rows` rows but whose data is that of `real`: a reader that
    trusts the header allocates terabytes."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(real.dtype), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buf, {**header, "shape": (rows, *real.shape[1:])})
    return buf.getvalue() + np.ascontiguousarray(real).tobytes()


def hostile_corpus(
    work_dir: Path,
    *,
    prefix: str = "hostile",
    serving_metric: tuple[str, float] | None = None,
) -> list[HostileCase]:
    """Build the corpus under `work_dir` (created). Every bundle gets its own version name
    (`<prefix>-<case>`), so one wrongly accepted never collides with another.

    `serving_metric` = (metric, value) of the serving version: the accuracy case then claims
    a tenth of that value; without it the accuracy case is left out."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cases: list[HostileCase] = []

    def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
        return tar_gz(list(members))

    # Archive safety: each unsafe member comes first, ahead of a valid bundle's files.
    cases += [
        HostileCase("path_traversal", archive(member("../escaped.txt")), "escapes the bundle"),
        HostileCase("absolute_path", archive(member("/tmp/evil.txt")), "absolute path"),
        HostileCase("symlink", archive(member("model.onnx", kind=tarfile.SYMTYPE)), "is a link"),
        HostileCase("hardlink", archive(member("model.onnx", kind=tarfile.LNKTYPE)), "is a link"),
        HostileCase(
            "device_file", archive(member("model.onnx", kind=tarfile.CHRTYPE)), "not a regular"
        ),
        HostileCase("subdirectory", archive(member("sub/model.onnx")), "must be flat"),
        HostileCase(
            "too_many_files",
            archive(*(member(f"f{i}.bin") for i in range(40))),
            "more than 16 files",
        ),
        HostileCase("decompression_bomb", bomb_archive(64 << 20), "decompression bomb"),
        HostileCase("not_a_tarball", b"\x1f\x8b but not really gzip", "not a valid .tar.gz"),
    ]

    def bundle_case(
        name: str, reason: str, corrupt: Any, *, gate: str = "mandatory", **spec: Any
    ) -> None:
        full = BundleSpec(**{"version": f"{prefix}-{name}".replace("_", "-"), **spec})
        d = make_bundle_dir(work_dir / name, full)
        corrupt(d, full)
        cases.append(HostileCase(name, pack_bundle(d), reason, gate))

    def set_manifest(**fields: Any) -> Any:
        def corrupt(d: Path, _: BundleSpec) -> None:
            m = read_manifest(d)
            m.update(fields)
            write_manifest(d, m)

        return corrupt

    def set_vocab(edit: Any) -> Any:
        def corrupt(d: Path, _: BundleSpec) -> None:
            vocab = json.loads((d / "vocab.json").read_text())
            replace_file(d, "vocab.json", json.dumps(edit(vocab)).encode())

        return corrupt

    def set_npy(name: str, make: Any) -> Any:
        def corrupt(d: Path, spec: BundleSpec) -> None:
            replace_file(d, name, npy_bytes(make(np.load(d / name), spec)))

        return corrupt

    def golden_nan(d: Path, _: BundleSpec) -> None:
        m = read_manifest(d)
        m["golden"][1]["output"][0] = float("nan")
        write_manifest(d, m)

    def nan_items(a: np.ndarray, _: BundleSpec) -> np.ndarray:
        a = a.copy()
        a[3, 1] = np.nan
        return a

    def inf_scales(a: np.ndarray, _: BundleSpec) -> np.ndarray:
        a = a.copy()
        a[5] = np.inf
        return a

    def unlisted_file(d: Path, _: BundleSpec) -> None:
        (d / "payload.py").write_text("import os; os.system('id')\n")

    bundle_case("sha256_mismatch", "does not match its sha256", lambda d, s: corrupt_checksum(d))
    bundle_case("size_mismatch", "manifest says", set_manifest(n_items=61))
    bundle_case("unlisted_file", "not listed in the manifest", unlisted_file)
    bundle_case(
        "onnx_not_a_model", "cannot be loaded by onnxruntime", lambda d, s: corrupt_onnx_bytes(d)
    )
    bundle_case("onnx_wrong_input_name", "inputs are", corrupt_onnx_signature)
    bundle_case(
        "onnx_wrong_input_dtype",
        "expected tensor(int64)",
        lambda d, s: corrupt_onnx_signature(d, s, kind="dtype"),
    )
    bundle_case(
        "onnx_fixed_batch",
        "batch axis must be dynamic",
        lambda d, s: corrupt_onnx_signature(d, s, kind="batch"),
    )
    bundle_case(
        "vocab_length_mismatch", "vocab.json has 62 entries", set_vocab(lambda v: [*v, "x"])
    )
    bundle_case("vocab_duplicate_ids", "duplicate item IDs", set_vocab(lambda v: [*v[:-1], v[1]]))
    bundle_case("vocab_empty_id", "empty item IDs", set_vocab(lambda v: [v[0], "", *v[2:]]))
    bundle_case("vocab_not_strings", "list of strings", set_vocab(lambda v: [*v[:-1], 7]))
    bundle_case(
        "nan_items", "items.npy contains NaN", set_npy("items.npy", nan_items), item_encoding="fp32"
    )
    bundle_case(
        "inf_scales", "item_scales.npy contains NaN or Inf", set_npy("item_scales.npy", inf_scales)
    )
    bundle_case("nan_golden", "golden output contains NaN", golden_nan)

    def many_golden(d: Path, _: BundleSpec) -> None:
        m = read_manifest(d)
        m["golden"] = m["golden"] * 100
        write_manifest(d, m)

    bundle_case("too_many_golden_pairs", "golden pairs; at most", many_golden)
    bundle_case("golden_mismatch", "golden outputs", lambda d, s: corrupt_golden(d))
    bundle_case("nan_encoder", "NaN", corrupt_nan_encoder)
    bundle_case(
        "pickled_object_npy",
        "holds Python objects",
        set_npy("popularity.npy", lambda a, s: np.array([{"x": 1}] * len(a), dtype=object)),
    )
    bundle_case(
        "npy_shape_bomb",
        "declares shape (1000000000000,)",
        lambda d, _: replace_file(
            d, "popularity.npy", npy_shape_bomb(np.load(d / "popularity.npy"))
        ),
    )
    bundle_case(
        "vocab_deeply_nested",
        "nested too deeply",
        lambda d, _: replace_file(d, "vocab.json", b"[" * 200_000 + b"]" * 200_000),
    )
    bundle_case(
        "negative_popularity", "negative counts", set_npy("popularity.npy", lambda a, s: a - 100)
    )
    bundle_case(
        "popularity_wrong_shape",
        "popularity.npy must be",
        set_npy("popularity.npy", lambda a, s: a[:-1]),
    )
    bundle_case(
        "bad_version_name", "invalid at model_version", set_manifest(model_version="../../etc")
    )

    if serving_metric is not None:
        metric, value = serving_metric
        bundle_case(
            "accuracy_gate",
            "accuracy gate",
            set_manifest(metrics={metric: value / 10}),
            gate="accuracy",
        )
    # As accurate as the serving version (when known), so only its speed can fail it.
    as_good = set_manifest(metrics=dict([serving_metric])) if serving_metric else lambda d, s: None
    bundle_case("latency_gate", "latency gate", as_good, gate="latency", slow_layers=SLOW_LAYERS)
    return cases
