"""The artifact store: one interface, a local folder by default, S3 when configured.

Stage outputs are content-addressed (``objects/<sha[:2]>/<sha>/<name>``): they are immutable by
construction, two runs that produce the same bytes share them, and a reference names exactly the
bytes it was made from. Published runs live under ``runs/<run_id>/`` and the ``latest`` pointer is
the only object ever overwritten, always with a conditional write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from filelock import FileLock

from tasks.core.hashing import dir_listing, sha256_bytes, sha256_file, sha256_listing
from tasks.core.refs import ArtifactRef


class StoreError(RuntimeError):
    """The store could not do what was asked (a missing object, a failed write)."""


class PointerConflict(StoreError):
    """A conditional pointer write lost against another writer."""


class ArtifactStore(ABC):
    """Where artifacts live. Implementations: :class:`LocalStore` and ``S3Store``."""

    root: str

    @abstractmethod
    def put_file(self, path: Path, kind: str, name: str | None = None, rows: int | None = None) -> ArtifactRef:
        """Store a file under its content hash and return its reference."""

    @abstractmethod
    def put_dir(self, path: Path, kind: str, name: str | None = None) -> ArtifactRef:
        """Store a folder under the hash of its listing and return its reference."""

    @abstractmethod
    def local_path(self, ref: ArtifactRef) -> Path:
        """A local path holding the referenced content (downloaded and checked if remote)."""

    @abstractmethod
    def verify(self, ref: ArtifactRef) -> bool:
        """True when the referenced content exists and its sha256 matches."""

    @abstractmethod
    def write_key(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` (relative to the root) if absent; return its URI.

        Writing the same bytes again is a no-op; different bytes at an existing key are refused,
        which keeps published runs immutable.
        """

    @abstractmethod
    def copy_ref_to(self, ref: ArtifactRef, key: str) -> str:
        """Publish a referenced artifact under ``key`` (immutable, verified); return its URI."""

    @abstractmethod
    def read_key(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when absent."""

    @abstractmethod
    def write_pointer(self, key: str, data: bytes, expected: bytes | None) -> None:
        """Compare-and-swap: write ``data`` only if the current content is ``expected``.

        ``expected=None`` means the pointer must not exist yet. Raises :class:`PointerConflict` when
        another writer got there first.
        """

    def put_bytes(self, data: bytes, name: str, kind: str, rows: int | None = None) -> ArtifactRef:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            return self.put_file(path, kind=kind, name=name, rows=rows)

    def put_json(self, value: object, name: str, kind: str) -> ArtifactRef:
        data = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode()
        return self.put_bytes(data, name=name, kind=kind)

    def read_json(self, ref: ArtifactRef) -> object:
        return json.loads(self.local_path(ref).read_text(encoding="utf-8"))


def _object_key(sha: str, name: str) -> str:
    return f"objects/{sha[:2]}/{sha}/{name}"


class LocalStore(ArtifactStore):
    """A folder on this machine. Writes go to a temporary name first, then are renamed into place."""

    def __init__(self, root: Path | str):
        self.path = Path(root).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.root = self.path.as_uri()

    def _resolve(self, uri: str) -> Path:
        if uri.startswith("file://"):
            return Path(uri[len("file://") :])
        return self.path / uri

    def put_file(self, path: Path, kind: str, name: str | None = None, rows: int | None = None) -> ArtifactRef:
        path = Path(path)
        sha = sha256_file(path)
        target = self.path / _object_key(sha, name or path.name)
        if not (target.exists() and sha256_file(target) == sha):
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(path, target)
        return ArtifactRef(uri=target.as_uri(), sha256=sha, bytes=target.stat().st_size, kind=kind, rows=rows)

    def put_dir(self, path: Path, kind: str, name: str | None = None) -> ArtifactRef:
        path = Path(path)
        listing = dir_listing(path)
        sha = sha256_listing(listing)
        target = self.path / _object_key(sha, name or path.name)
        if not (target.exists() and sha256_listing(dir_listing(target)) == sha):
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
            try:
                shutil.copytree(path, staging, dirs_exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        size = sum(entry[2] for entry in listing)
        return ArtifactRef(uri=target.as_uri(), sha256=sha, bytes=size, kind=kind, is_dir=True)

    def local_path(self, ref: ArtifactRef) -> Path:
        path = self._resolve(ref.uri)
        if not path.exists():
            raise StoreError(f"artifact {ref.uri} is missing from the store")
        return path

    def verify(self, ref: ArtifactRef) -> bool:
        path = self._resolve(ref.uri)
        if not path.exists():
            return False
        if ref.is_dir:
            return path.is_dir() and sha256_listing(dir_listing(path)) == ref.sha256
        return path.is_file() and sha256_file(path) == ref.sha256

    def write_key(self, key: str, data: bytes) -> str:
        target = self.path / key
        if target.exists():
            if sha256_file(target) != sha256_bytes(data):
                raise StoreError(f"{key} already exists with other content; published artifacts are immutable")
            return target.as_uri()
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)
        return target.as_uri()

    def copy_ref_to(self, ref: ArtifactRef, key: str) -> str:
        source = self.local_path(ref)
        target = self.path / key
        if ref.is_dir:
            if target.exists():
                if sha256_listing(dir_listing(target)) != ref.sha256:
                    raise StoreError(f"{key} already exists with other content")
                return target.as_uri()
            staging = Path(tempfile.mkdtemp(dir=self.path, prefix=".tmp-"))
            shutil.copytree(source, staging, dirs_exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
        else:
            if target.exists():
                if sha256_file(target) != ref.sha256:
                    raise StoreError(f"{key} already exists with other content")
                return target.as_uri()
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(source, target, link=True)
            if sha256_file(target) != ref.sha256:
                target.unlink()
                raise StoreError(f"copy of {ref.uri} to {key} does not match its sha256")
        return target.as_uri()

    def read_key(self, key: str) -> bytes | None:
        target = self.path / key
        return target.read_bytes() if target.is_file() else None

    def write_pointer(self, key: str, data: bytes, expected: bytes | None) -> None:
        target = self.path / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock", timeout=60):
            current = target.read_bytes() if target.exists() else None
            if current != expected:
                raise PointerConflict(f"{key} changed since it was read; another publisher won")
            _atomic_write(target, data)


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_copy(source: Path, target: Path, link: bool = False) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    os.close(fd)
    try:
        if link:
            # A hard link costs nothing and objects are never modified in place.
            try:
                os.unlink(tmp)
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_store(location: str | None = None) -> ArtifactStore:
    """The store named by ``location`` (or settings): ``s3://bucket/prefix`` or a local folder."""
    from tasks.core.settings import get_settings

    settings = get_settings()
    location = location or settings.store_location
    if location.startswith("s3://"):
        from tasks.core.s3store import S3Store

        return S3Store.from_uri(location, endpoint_url=settings.s3_endpoint_url)
    return LocalStore(location)
