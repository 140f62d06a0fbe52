"""The model directory: one verified bundle per installed version, and uploads being checked.

    <model_dir>/<version>/    one verified bundle per version (name = manifest.model_version)
    <model_dir>/.staging-*    an upload being validated; removed on failure and at start
    <model_dir>/.upload-*     an anonymous file an upload is spooled into

A bundle is filled into a staging directory, validated there (by the registry), and only
then renamed into place, so a version directory always holds a good bundle. The workers of
one host share the directory (`WORKERS`): a staging directory of a live process is left
alone, and a rename that loses a race to another worker reports the version as existing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from pydantic import ValidationError

from bundle import Manifest
from bundle.manifest import VERSION_PATTERN
from service.errors import InvalidBundle, VersionExists

MANIFEST_FILE = "manifest.json"
STAGING_PREFIX = ".staging-"
UPLOAD_PREFIX = ".upload-"
_VERSION_RE = re.compile(VERSION_PATTERN)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    active: bool
    manifest: Manifest | None
    error: str | None = None  # why the manifest could not be read


def is_version_name(name: str) -> bool:
    return _VERSION_RE.match(name) is not None


def _staged_by_a_live_process(staging: Path) -> bool:
    """Whether a staging directory (`.staging-<pid>-...`) belongs to a process that is still
    running: the workers of one host share the model directory (`WORKERS`)."""
    pid = staging.name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def bundle_path(self, version: str) -> Path:
        return self.path / version

    def has(self, version: str) -> bool:
        """Whether `version` is installed (a valid name holding a manifest)."""
        return is_version_name(version) and (self.path / version / MANIFEST_FILE).is_file()

    def remove_stale_staging(self) -> None:
        """Remove what interrupted uploads left, unless another live worker is staging."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(f"{STAGING_PREFIX}*"):
            if not _staged_by_a_live_process(stale):
                shutil.rmtree(stale, ignore_errors=True)

    def upload_tempfile(self) -> BinaryIO:
        """An anonymous file on the model directory's filesystem to spool an upload into."""
        self.path.mkdir(parents=True, exist_ok=True)
        return cast(BinaryIO, tempfile.TemporaryFile(dir=self.path, prefix=UPLOAD_PREFIX))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh staging directory, removed on the way out unless it was installed."""
        self.path.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.path))
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def refuse_existing(self, staging: Path) -> None:
        """VersionExists when the staged manifest names an installed version (cheap, before
        the expensive checks); an unreadable manifest is left to `bundle.read_bundle`."""
        try:
            version = Manifest.model_validate_json(
                (staging / MANIFEST_FILE).read_bytes()
            ).model_version
        except (OSError, ValidationError):
            return
        self.refuse_installed(version)

    def refuse_installed(self, version: str) -> None:
        """VersionExists when `version` has a directory here already."""
        if (self.path / version).exists():
            raise VersionExists(version)

    def install(self, staging: Path, version: str) -> None:
        """Rename a validated staging directory into place as `version`."""
        self.refuse_installed(version)
        target = self.path / version
        try:
            staging.rename(target)
        except OSError as e:  # another worker of this host installed it meanwhile
            if target.exists():
                raise VersionExists(version) from e
            raise InvalidBundle(f"cannot install {version!r}: {e}") from e

    def versions(self, active: str | None) -> list[VersionInfo]:
        """Every installed version by name, with its manifest (or why it cannot be read)."""
        out: list[VersionInfo] = []
        if not self.path.is_dir():
            return out
        for d in sorted(self.path.iterdir()):
            if not d.is_dir() or not is_version_name(d.name):
                continue
            try:
                manifest = Manifest.model_validate_json((d / MANIFEST_FILE).read_bytes())
            except (OSError, ValidationError) as e:
                out.append(VersionInfo(d.name, d.name == active, None, str(e).splitlines()[0]))
                continue
            out.append(VersionInfo(d.name, d.name == active, manifest))
        return out
