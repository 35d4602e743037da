"""The artifact store on S3 or any S3-compatible endpoint (MinIO, R2, moto...).

Same layout and contract as :class:`~tasks.core.store.LocalStore`, under ``s3://bucket/prefix``:

- ``objects/<sha[:2]>/<sha>/<name>`` holds content-addressed files; a folder is every object under
  ``objects/<sha[:2]>/<sha>/<name>/`` and ``sha`` is the sha256 of its listing
  (:func:`tasks.core.hashing.sha256_listing`).
- Every object we write carries its hex sha256 in the ``sha256`` user metadata and is uploaded with
  ``ChecksumAlgorithm="SHA256"``, so AWS itself checks the bytes on the way in (single-part puts, and
  every part of a multipart upload). After an upload we read the object's head back and compare.
- A check of stored content (:meth:`S3Store.verify`, :meth:`S3Store.copy_ref_to`) uses the server's
  full-object SHA-256 when the server reports one (AWS does for single-part objects and copies);
  otherwise it streams the object and hashes it. The metadata alone is never trusted as proof.
- Keys outside ``objects/`` are written with conditional requests: ``IfNoneMatch="*"`` for immutable
  keys and ``IfMatch=<etag>`` for the ``latest`` pointer, so two publishers can never both win.
  The endpoint must support conditional writes (AWS since 2024, MinIO, R2 do).
- :meth:`S3Store.local_path` downloads into ``<cache_dir>/s3/<sha>/<name>`` and checks the sha256
  of the local copy every time it hands it out.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tasks.core.hashing import dir_listing, sha256_bytes, sha256_file, sha256_listing
from tasks.core.refs import ArtifactRef
from tasks.core.store import ArtifactStore, PointerConflict, StoreError, _object_key

_SHA_META = "sha256"
_CHUNK = 1 << 20
# Multipart above 64 MiB, in 64 MiB parts: a 1 GB GGUF is 16 parts, well under S3's 10,000.
_MULTIPART_BYTES = 64 * 1024 * 1024


def _b64_sha256(hex_sha: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_sha)).decode()


def _error_code(error: Exception) -> tuple[str, int]:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_missing(error: Exception) -> bool:
    code, status = _error_code(error)
    return status == 404 or code in {"404", "NoSuchKey", "NotFound"}


def _is_precondition_failure(error: Exception) -> bool:
    # 412: the condition did not hold. 409 ConditionalRequestConflict: AWS saw a concurrent
    # conditional write on the same key and refused this one; either way someone else won.
    code, status = _error_code(error)
    return status in {409, 412} or code in {"PreconditionFailed", "ConditionalRequestConflict"}


class S3Store(ArtifactStore):
    """Artifacts in an S3 bucket under a prefix. Thread-safe: boto3 clients may be shared by threads."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        multipart_bytes: int = _MULTIPART_BYTES,
    ):
        self.bucket = bucket
        self.multipart_bytes = multipart_bytes
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client = client if client is not None else self._make_client(endpoint_url)
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_uri(cls, location: str, endpoint_url: str | None = None, client: Any = None, **kwargs: Any) -> S3Store:
        """A store for ``s3://bucket[/prefix]``; ``endpoint_url`` picks an S3-compatible service."""
        parsed = urlparse(location)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an S3 location: {location!r} (expected s3://bucket/prefix)")
        return cls(parsed.netloc, parsed.path, client=client, endpoint_url=endpoint_url, **kwargs)

    @staticmethod
    def _make_client(endpoint_url: str | None) -> Any:
        import boto3
        from botocore.config import Config

        # A session per store: boto3's default session is not thread-safe to create clients from.
        session = boto3.session.Session()
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            # Custom endpoints (moto, MinIO, an IP address) rarely resolve bucket subdomains.
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.region_name
        return session.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config)

    @property
    def client(self) -> Any:
        return self._client

    # -- keys and URIs -------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _uri(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def _locate(self, uri: str) -> tuple[str, str]:
        """(bucket, key) of an ``s3://`` URI, or of a key relative to this store's root."""
        if uri.startswith("s3://"):
            parsed = urlparse(uri)
            return parsed.netloc, parsed.path.lstrip("/").rstrip("/")
        if "://" in uri:
            raise StoreError(f"{uri} is not an S3 artifact; this store is {self.root}")
        return self.bucket, self._key(uri).rstrip("/")

    # -- object primitives -----------------------------------------------------------------------

    def _head(self, bucket: str, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self._client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            if _is_missing(error):
                return None
            raise

    @staticmethod
    def _server_sha256(head: dict) -> str | None:
        """The server's full-object SHA-256 (hex) of the stored bytes, when it reports one.

        Multipart objects carry a checksum of part checksums (``...-N`` or ChecksumType COMPOSITE),
        which says nothing directly about the whole object, so it is not used.
        """
        value = head.get("ChecksumSHA256")
        if not value or "-" in value or "-" in head.get("ETag", ""):
            return None
        if head.get("ChecksumType") not in (None, "FULL_OBJECT"):
            return None
        try:
            return base64.b64decode(value).hex()
        except ValueError:
            return None

    def _stream_sha256(self, bucket: str, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as error:
            if _is_missing(error):
                return None
            raise
        digest = hashlib.sha256()
        for chunk in body.iter_chunks(_CHUNK):
            digest.update(chunk)
        return digest.hexdigest()

    def _object_sha256(self, bucket: str, key: str, head: dict | None = None) -> str | None:
        """The sha256 of the bytes stored at ``key`` (None when absent), never taken from metadata."""
        head = head if head is not None else self._head(bucket, key)
        if head is None:
            return None
        return self._server_sha256(head) or self._stream_sha256(bucket, key)

    def _upload_file(self, path: Path, key: str, sha: str) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.multipart_bytes, multipart_chunksize=self.multipart_bytes)
        self._client.upload_file(
            str(path),
            self.bucket,
            key,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {_SHA_META: sha}},
            Config=config,
        )
        head = self._head(self.bucket, key)
        self._check_uploaded(key, head, sha, path.stat().st_size)

    def _check_uploaded(self, key: str, head: dict | None, sha: str, size: int) -> None:
        if head is None:
            raise StoreError(f"upload of s3://{self.bucket}/{key} reported success but the object is missing")
        server_sha = self._server_sha256(head)
        recorded = head.get("Metadata", {}).get(_SHA_META)
        if head.get("ContentLength") != size or recorded != sha or (server_sha and server_sha != sha):
            raise StoreError(
                f"s3://{self.bucket}/{key} does not match what was uploaded "
                f"(size {head.get('ContentLength')} vs {size}, sha256 {server_sha or recorded} vs {sha})"
            )

    def _has_object(self, key: str, sha: str, size: int) -> bool:
        """True when ``key`` already holds a matching object, so uploading it again can be skipped.

        Objects under ``objects/`` are only ever written by this class, with the metadata checked
        after upload, so this cheap check uses the recorded sha plus the server checksum when known;
        :meth:`verify` is the deep check.
        """
        head = self._head(self.bucket, key)
        if head is None:
            return False
        server_sha = self._server_sha256(head)
        recorded = head.get("Metadata", {}).get(_SHA_META)
        return head.get("ContentLength") == size and recorded == sha and server_sha in (None, sha)

    def _list(self, bucket: str, prefix: str) -> list[dict]:
        paginator = self._client.get_paginator("list_objects_v2")
        objects: list[dict] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            objects.extend(page.get("Contents", []))
        return objects

    def _get(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        """Put ``data`` unless ``key`` exists; True when this call created it."""
        from botocore.exceptions import ClientError

        sha = sha256_bytes(data)
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                Metadata={_SHA_META: sha},
            )
        except ClientError as error:
            if _is_precondition_failure(error):
                return False
            raise
        return True

    # -- the ArtifactStore interface -----------------------------------------------------------

    def put_file(self, path: Path, kind: str, name: str | None = None, rows: int | None = None) -> ArtifactRef:
        path = Path(path)
        sha = sha256_file(path)
        size = path.stat().st_size
        key = self._key(_object_key(sha, name or path.name))
        if not self._has_object(key, sha, size):
            self._upload_file(path, key, sha)
        return ArtifactRef(uri=self._uri(key), sha256=sha, bytes=size, kind=kind, rows=rows)

    def put_dir(self, path: Path, kind: str, name: str | None = None) -> ArtifactRef:
        path = Path(path)
        listing = dir_listing(path)
        sha = sha256_listing(listing)
        base = self._key(_object_key(sha, name or path.name))
        for rel, file_sha, size in listing:
            key = f"{base}/{rel}"
            if not self._has_object(key, file_sha, size):
                self._upload_file(path / rel, key, file_sha)
        size = sum(entry[2] for entry in listing)
        return ArtifactRef(uri=self._uri(base), sha256=sha, bytes=size, kind=kind, is_dir=True)

    def _remote_listing(self, bucket: str, base: str, deep: bool) -> list[tuple[str, str, int]] | None:
        """(relative path, sha256, size) of every object under folder ``base``; None when empty.

        ``deep`` hashes the stored bytes (server checksum or download); otherwise the recorded
        metadata is used, falling back to hashing objects that carry none.
        """
        entries = []
        for obj in self._list(bucket, base + "/"):
            key = obj["Key"]
            head = self._head(bucket, key)
            if head is None:  # deleted while listing
                continue
            recorded = head.get("Metadata", {}).get(_SHA_META)
            sha = self._object_sha256(bucket, key, head) if deep or not recorded else recorded
            if sha is None:
                continue
            entries.append((key[len(base) + 1 :], sha, int(head["ContentLength"])))
        return sorted(entries) or None

    def verify(self, ref: ArtifactRef) -> bool:
        bucket, key = self._locate(ref.uri)
        if ref.is_dir:
            listing = self._remote_listing(bucket, key, deep=True)
            return listing is not None and sha256_listing(listing) == ref.sha256
        head = self._head(bucket, key)
        if head is None or head.get("ContentLength") != ref.bytes:
            return False
        return self._object_sha256(bucket, key, head) == ref.sha256

    def local_path(self, ref: ArtifactRef) -> Path:
        from tasks.core.settings import get_settings

        cache = get_settings().cache_dir / "s3" / ref.sha256
        target = cache / ref.name
        if target.exists():
            if _local_sha256(target, ref.is_dir) == ref.sha256:
                return target
            # A damaged cached copy is discarded, never handed out.
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        cache.mkdir(parents=True, exist_ok=True)
        bucket, key = self._locate(ref.uri)
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
        try:
            download = staging / ref.name
            if ref.is_dir:
                objects = self._list(bucket, key + "/")
                if not objects:
                    raise StoreError(f"artifact {ref.uri} is missing from the store")
                for obj in objects:
                    local = download / obj["Key"][len(key) + 1 :]
                    local.parent.mkdir(parents=True, exist_ok=True)
                    self._download_file(bucket, obj["Key"], local)
            else:
                if self._head(bucket, key) is None:
                    raise StoreError(f"artifact {ref.uri} is missing from the store")
                self._download_file(bucket, key, download)
            actual = _local_sha256(download, ref.is_dir)
            if actual != ref.sha256:
                raise StoreError(f"artifact {ref.uri} is corrupted: sha256 {actual}, expected {ref.sha256}")
            try:
                os.replace(download, target)
            except OSError:
                # Another process put a verified copy in place first (a folder cannot be replaced).
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def write_key(self, key: str, data: bytes) -> str:
        full = self._key(key)
        for attempt in range(3):
            if self._put_if_absent(full, data):
                return self._uri(full)
            current = self._get(self.bucket, full)
            if current is not None:
                if current[0] != data:
                    raise StoreError(f"{key} already exists with other content; published artifacts are immutable")
                return self._uri(full)
            # Refused (409) while another conditional write to the key was in flight, and that one
            # has not landed (or failed): try again.
            time.sleep(0.2 * (attempt + 1))
        raise StoreError(f"could not write {key}: concurrent conditional writes kept conflicting")

    def copy_ref_to(self, ref: ArtifactRef, key: str) -> str:
        bucket, source = self._locate(ref.uri)
        target = self._key(key)
        if ref.is_dir:
            wanted = self._remote_listing(bucket, source, deep=False)
            if wanted is None or sha256_listing(wanted) != ref.sha256:
                raise StoreError(f"artifact {ref.uri} is missing from the store or incomplete")
            present = set(self._remote_listing(self.bucket, target, deep=False) or [])
            if not present <= set(wanted):
                raise StoreError(f"{key} already exists with other content")
            # Copy what is missing: a copy interrupted half-way is completed, not refused.
            for rel, _, _ in sorted(set(wanted) - present):
                self._copy_object(bucket, f"{source}/{rel}", f"{target}/{rel}")
            copied = self._remote_listing(self.bucket, target, deep=True)
            if copied is None or sha256_listing(copied) != ref.sha256:
                raise StoreError(f"copy of {ref.uri} to {key} does not match its sha256")
            return self._uri(target)

        existing = self._head(self.bucket, target)
        if existing is not None:
            if self._object_sha256(self.bucket, target, existing) != ref.sha256:
                raise StoreError(f"{key} already exists with other content")
            return self._uri(target)
        if self._head(bucket, source) is None:
            raise StoreError(f"artifact {ref.uri} is missing from the store")
        self._copy_object(bucket, source, target)
        if self._object_sha256(self.bucket, target) != ref.sha256:
            raise StoreError(f"copy of {ref.uri} to {key} does not match its sha256")
        return self._uri(target)

    def _download_file(self, bucket: str, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        # Ranged GETs in the upload's part size, not boto3's 8 MiB default: a 540 MB model is 9 requests,
        # not 68 (moto's server re-reads the whole object for each range: 23 s -> 4.6 s there).
        config = TransferConfig(multipart_threshold=self.multipart_bytes, multipart_chunksize=self.multipart_bytes)
        self._client.download_file(bucket, key, str(path), Config=config)

    def _copy_object(self, bucket: str, source: str, target: str) -> None:
        from boto3.s3.transfer import TransferConfig

        # The managed copy switches to a multipart copy for objects over 5 GB, which CopyObject
        # refuses. Metadata (our sha256) is copied along with the bytes.
        self._client.copy(
            {"Bucket": bucket, "Key": source},
            self.bucket,
            target,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "MetadataDirective": "COPY"},
            Config=TransferConfig(multipart_threshold=self.multipart_bytes, multipart_chunksize=self.multipart_bytes),
        )

    def read_key(self, key: str) -> bytes | None:
        found = self._get(self.bucket, self._key(key))
        return None if found is None else found[0]

    def write_pointer(self, key: str, data: bytes, expected: bytes | None) -> None:
        from botocore.exceptions import ClientError

        full = self._key(key)
        if expected is None:
            if not self._put_if_absent(full, data):
                raise PointerConflict(f"{key} already exists; another publisher won")
            return
        current = self._get(self.bucket, full)
        if current is None or current[0] != expected:
            raise PointerConflict(f"{key} changed since it was read; another publisher won")
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                IfMatch=current[1],
                ChecksumAlgorithm="SHA256",
                Metadata={_SHA_META: sha256_bytes(data)},
            )
        except ClientError as error:
            if _is_precondition_failure(error):
                raise PointerConflict(f"{key} changed while it was being written; another publisher won") from None
            raise


def _local_sha256(path: Path, is_dir: bool) -> str:
    return sha256_listing(dir_listing(path)) if is_dir else sha256_file(path)
