"""Pack a bundle directory into a .tar.gz and unpack uploads safely.

An uploaded archive is hostile until proven otherwise: only regular files at the top level,
no absolute paths, no `..`, no links or devices, bounded file count, bounded bytes after
decompression (a gzip bomb stops at the limit instead of filling the disk) and a bounded
expansion ratio (unpacked bytes per compressed byte read), so a bomb is refused after a few
MiB even when the byte limit is generous. Real bundles expand little: int8 weights and
float scales barely compress; gzip's own ceiling is about 1000x, reached only by runs of
one byte value.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import BinaryIO

from bundle.errors import BundleError

DEFAULT_MAX_FILES = 16
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB after decompression
DEFAULT_MAX_RATIO = 100.0  # unpacked bytes per compressed byte
RATIO_FLOOR_BYTES = 4 << 20  # the ratio is enforced once this much has been unpacked


class _CountingReader:
    """Wraps the compressed source and counts the bytes read from it."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        self.n += len(data)
        return data

    def __getattr__(self, name: str) -> object:  # seek, tell, ... of the source
        return getattr(self._src, name)


def pack_bundle(bundle_dir: Path, out: Path | None = None) -> bytes:
    """Return the bundle as .tar.gz bytes (files at the archive root); also write `out` if given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(bundle_dir.iterdir()):
            if p.is_file():
                tar.add(p, arcname=p.name, recursive=False)
    data = buf.getvalue()
    if out is not None:
        out.write_bytes(data)
    return data


def _not_flat(member: str) -> str:
    """The refusal of an archive with a directory in it: the common packing mistake
    `tar -C parent -czf v4.tar.gz v4`, and the command that packs it right."""
    top = member.strip("/").split("/", 1)[0] or member
    return (
        f"archive member {member!r} is a directory or inside one, but a bundle archive must "
        f"be flat: the bundle's files at its top level. Pack the directory's contents, e.g. "
        f"`tar -C {top} -czf {top}.tar.gz .` (or `python -m models` writes the .tar.gz)"
    )


def extract_archive(
    src: BinaryIO,
    dest: Path,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> None:
    """Unpack a bundle .tar.gz from `src` into the empty directory `dest`.

    Raises BundleError naming the offending member; `dest` may then hold partial output,
    which the caller discards.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    count = 0
    compressed = _CountingReader(src)

    def check_ratio(unpacked: int) -> None:
        if unpacked > RATIO_FLOOR_BYTES and unpacked > max_ratio * max(compressed.n, 1):
            raise BundleError(
                f"archive expands more than {max_ratio:g}x ({unpacked} bytes from "
                f"{compressed.n} compressed): refused as a decompression bomb"
            )

    try:
        with tarfile.open(fileobj=compressed, mode="r:gz") as tar:  # type: ignore[call-overload]
            for member in tar:
                count += 1
                if count > max_files:
                    raise BundleError(f"archive has more than {max_files} files")
                name = member.name
                if name.startswith("./"):
                    name = name[2:]
                if member.isdir() and name in ("", "."):
                    continue
                if name.startswith("/") or Path(name).is_absolute():
                    raise BundleError(f"archive member {member.name!r} has an absolute path")
                if ".." in Path(name).parts:
                    raise BundleError(
                        f"archive member {member.name!r} escapes the bundle with '..'"
                    )
                if member.issym() or member.islnk():
                    raise BundleError(f"archive member {member.name!r} is a link")
                if member.isdir() or "/" in name:
                    raise BundleError(_not_flat(member.name))
                if not member.isfile() or not name:
                    raise BundleError(f"archive member {member.name!r} is not a regular file")
                if member.size > max_bytes - written:
                    raise BundleError(f"archive unpacks to more than {max_bytes} bytes")
                f = tar.extractfile(member)
                if f is None:
                    raise BundleError(f"archive member {member.name!r} cannot be read")
                target = dest / name
                if target.exists():
                    raise BundleError(f"archive holds {name!r} twice")
                with target.open("wb") as out:
                    remaining = member.size
                    while remaining > 0:
                        chunk = f.read(min(remaining, 1 << 20))
                        if not chunk:
                            raise BundleError(f"archive member {member.name!r} is truncated")
                        out.write(chunk)
                        remaining -= len(chunk)
                        check_ratio(written + member.size - remaining)
                written += member.size
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"not a valid .tar.gz archive: {e}") from e
    if count == 0:
        raise BundleError("archive is empty")
