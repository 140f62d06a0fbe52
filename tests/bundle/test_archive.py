import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bundle import BundleError, extract_archive, pack_bundle


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_pack_then_extract_restores_the_same_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "b.bin").write_bytes(bytes(range(256)))
    out = tmp_path / "b.tar.gz"
    data = pack_bundle(src, out)
    assert out.read_bytes() == data
    dest = tmp_path / "dest"
    extract_archive(io.BytesIO(data), dest)
    assert (dest / "a.txt").read_text() == "alpha"
    assert (dest / "b.bin").read_bytes() == bytes(range(256))


def test_extract_accepts_dot_slash_prefix(tmp_path: Path) -> None:
    extract_archive(_tar([_file("./m.json", b"{}")]), tmp_path / "d")
    assert (tmp_path / "d" / "m.json").read_bytes() == b"{}"


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_file("/etc/evil")], "absolute path"),
        ([_file("../evil")], "escapes the bundle"),
        ([_file("sub/file")], "must be flat"),
        ([_link("model.onnx", "/etc/passwd", tarfile.SYMTYPE)], "is a link"),
        ([_link("model.onnx", "other", tarfile.LNKTYPE)], "is a link"),
        ([_file(f"f{i}") for i in range(20)], "more than 16 files"),
        ([_file("a"), _file("a")], "twice"),
        ([], "empty"),
    ],
)
def test_extract_rejects_unsafe_archives(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    with pytest.raises(BundleError, match=reason):
        extract_archive(_tar(members), tmp_path / "d")
    assert not (tmp_path / "evil").exists()


def test_extract_rejects_fifo(tmp_path: Path) -> None:
    info = tarfile.TarInfo("pipe")
    info.type = tarfile.FIFOTYPE
    with pytest.raises(BundleError, match="not a regular file"):
        extract_archive(_tar([(info, None)]), tmp_path / "d")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (tarfile.CHRTYPE, "not a regular file"),
        (tarfile.BLKTYPE, "not a regular file"),
        (tarfile.DIRTYPE, "must be flat"),
    ],
)
def test_extract_rejects_devices_and_directories(tmp_path: Path, kind: bytes, reason: str) -> None:
    info = tarfile.TarInfo("model.onnx")
    info.type = kind
    with pytest.raises(BundleError, match=reason):
        extract_archive(_tar([(info, None)]), tmp_path / "d")


def test_extract_refuses_a_bomb_by_its_expansion_ratio_below_the_byte_limit(
    tmp_path: Path,
) -> None:
    bomb = _tar([_file("zeros", bytes(64 << 20))])  # ~64 KiB compressed, 1000x
    with pytest.raises(BundleError, match="expands more than 100x"):
        extract_archive(bomb, tmp_path / "d", max_bytes=1 << 30)
    written = sum(p.stat().st_size for p in (tmp_path / "d").iterdir())
    assert written < 16 << 20  # stopped early, not after unpacking it all


def test_extract_accepts_a_realistic_bundle_ratio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-127, 128, size=8 << 20, dtype="int8").tobytes()
    extract_archive(_tar([_file("items.npy", data)]), tmp_path / "d")
    assert (tmp_path / "d" / "items.npy").stat().st_size == len(data)


def test_extract_stops_a_decompression_bomb_at_the_limit(tmp_path: Path) -> None:
    bomb = _tar([_file("zeros", bytes(10 << 20))])
    assert len(bomb.getvalue()) < 100_000  # tiny on the wire, 10 MiB unpacked
    with pytest.raises(BundleError, match="more than 1048576 bytes"):
        extract_archive(bomb, tmp_path / "d", max_bytes=1 << 20)


def test_extract_rejects_data_that_is_not_gzip(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"not a valid \.tar\.gz"):
        extract_archive(io.BytesIO(b"PK\x03\x04 a zip, not a tarball"), tmp_path / "d")


def test_a_bundle_directory_packed_with_its_name_is_refused_saying_how_to_pack_it(
    tmp_path: Path,
) -> None:
    """`tar -C parent -czf v4.tar.gz v4`: the common mistake gets the command that fixes it."""
    bundle = tmp_path / "v4"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(bundle, arcname="v4")  # what `tar -C tmp_path -czf v4.tar.gz v4` writes
    packed.seek(0)
    with pytest.raises(BundleError) as refused:
        extract_archive(packed, tmp_path / "out")
    message = str(refused.value)
    assert "archive member 'v4'" in message and "must be flat" in message
    assert "`tar -C v4 -czf v4.tar.gz .`" in message


def test_the_packing_command_the_refusal_suggests_makes_a_flat_archive(tmp_path: Path) -> None:
    bundle = tmp_path / "v4"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(bundle, arcname=".")  # `tar -C v4 -czf v4.tar.gz .`
    packed.seek(0)
    extract_archive(packed, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").read_text() == "{}"
