"""Content hashes for files, folders and JSON-able values."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=32)
def _sha256_file_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def sha256_file_cached(path: Path) -> str:
    """:func:`sha256_file`, computed once per process for each version (size, mtime) of a file: for
    large files hashed again and again, such as a local model named in every cache key."""
    stat = path.stat()
    return _sha256_file_version(str(path), stat.st_size, stat.st_mtime_ns)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dir_listing(path: Path) -> list[tuple[str, str, int]]:
    """(relative path, sha256, size) of every file under ``path``, sorted by path."""
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        entries.append((file.relative_to(path).as_posix(), sha256_file(file), file.stat().st_size))
    return entries


def sha256_listing(entries: list[tuple[str, str, int]]) -> str:
    text = "".join(f"{rel}\0{sha}\n" for rel, sha, _ in entries)
    return sha256_bytes(text.encode())


def sha256_dir(path: Path) -> str:
    return sha256_listing(dir_listing(path))


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_json(value: Any) -> str:
    return sha256_bytes(canonical_json(value).encode())
