"""S3Store against moto's real HTTP S3 server: layout, checksums, corruption, conditional writes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tasks.core.hashing import sha256_bytes, sha256_dir
from tasks.core.s3store import S3Store
from tasks.core.settings import get_settings
from tasks.core.store import PointerConflict, StoreError, get_store
from tests.fakes.s3 import moto_s3_endpoint, new_bucket, s3_client

pytestmark = pytest.mark.integration

PREFIX = "team/distillery"


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3_endpoint() as url:
        yield url


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.fixture
def bucket(endpoint) -> str:
    return new_bucket(endpoint)


@pytest.fixture
def store(endpoint, bucket) -> S3Store:
    return S3Store(bucket, PREFIX, endpoint_url=endpoint)


@pytest.fixture
def raw(endpoint):
    """A plain boto3 client: what another tool (or a bug) could do to the bucket behind our back."""
    return s3_client(endpoint)


def _key(ref) -> str:
    return ref.uri.split("/", 3)[3]


def test_get_store_builds_an_s3_store_from_settings(endpoint, bucket, monkeypatch):
    monkeypatch.setenv("DISTILLERY_STORE_URI", f"s3://{bucket}/{PREFIX}")
    monkeypatch.setenv("DISTILLERY_S3_ENDPOINT_URL", endpoint)
    get_settings.cache_clear()

    store = get_store()

    assert isinstance(store, S3Store) and store.root == f"s3://{bucket}/{PREFIX}"
    ref = store.put_bytes(b"hello", name="hello.txt", kind="report")
    assert store.local_path(ref).read_bytes() == b"hello"


def test_file_layout_metadata_and_checksum(store, raw, bucket, home):
    ref = store.put_bytes(b"payload", name="data.jsonl", kind="dataset")

    sha = sha256_bytes(b"payload")
    assert ref.uri == f"s3://{bucket}/{PREFIX}/objects/{sha[:2]}/{sha}/data.jsonl"
    head = raw.head_object(Bucket=bucket, Key=_key(ref), ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == sha
    assert head["ChecksumSHA256"]  # uploaded with a SHA-256 checksum the server keeps
    local = store.local_path(ref)
    assert local == home / "cache" / "s3" / sha / "data.jsonl"


def test_folder_layout(store, raw, bucket, tmp_path):
    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}")
    (folder / "sub" / "weights.bin").write_bytes(os.urandom(4096))

    ref = store.put_dir(folder, kind="adapter")

    keys = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=_key(ref) + "/")["Contents"])
    assert keys == [f"{_key(ref)}/config.json", f"{_key(ref)}/sub/weights.bin"]
    assert _key(ref) == f"{PREFIX}/objects/{ref.sha256[:2]}/{ref.sha256}/adapter"
    assert sha256_dir(store.local_path(ref)) == sha256_dir(folder)


def test_multipart_upload_round_trip(endpoint, bucket, tmp_path):
    store = S3Store(bucket, PREFIX, endpoint_url=endpoint, multipart_bytes=5 * 1024 * 1024)
    big = tmp_path / "model.gguf"
    big.write_bytes(os.urandom(12 * 1024 * 1024))

    ref = store.put_file(big, kind="gguf")

    head = store.client.head_object(Bucket=bucket, Key=_key(ref))
    assert head["ETag"].strip('"').endswith("-3")  # really went up in three parts
    assert store.verify(ref)
    assert store.local_path(ref).read_bytes() == big.read_bytes()
    published = store.copy_ref_to(ref, "runs/r1/model.gguf")
    assert published.endswith("/runs/r1/model.gguf")


def test_verify_detects_a_corrupted_object(store, raw, bucket):
    ref = store.put_bytes(b"the real bytes", name="model.gguf", kind="gguf")
    assert store.verify(ref)

    # Other bytes of the same length, with the metadata still claiming the original sha256.
    raw.put_object(Bucket=bucket, Key=_key(ref), Body=b"the fake bytes", Metadata={"sha256": ref.sha256})

    assert not store.verify(ref)
    with pytest.raises(StoreError, match="corrupted"):
        store.local_path(ref)


def test_verify_detects_a_corrupted_or_incomplete_folder(store, raw, bucket, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"aaaa")
    (folder / "b.bin").write_bytes(b"bbbb")
    ref = store.put_dir(folder, kind="adapter")
    assert store.verify(ref)

    raw.put_object(Bucket=bucket, Key=f"{_key(ref)}/a.bin", Body=b"AAAA", Metadata={"sha256": sha256_bytes(b"aaaa")})
    assert not store.verify(ref)
    raw.put_object(Bucket=bucket, Key=f"{_key(ref)}/a.bin", Body=b"aaaa")
    assert store.verify(ref)
    raw.delete_object(Bucket=bucket, Key=f"{_key(ref)}/b.bin")
    assert not store.verify(ref)


def test_local_cache_is_reused_and_a_damaged_copy_is_replaced(store, monkeypatch):
    ref = store.put_bytes(b"cached bytes", name="x.bin", kind="report")
    downloads = []
    original = store.client.download_file
    monkeypatch.setattr(store.client, "download_file", lambda *a, **k: (downloads.append(a), original(*a, **k)))

    first = store.local_path(ref)
    store.local_path(ref)
    assert len(downloads) == 1

    first.write_bytes(b"damaged")
    assert store.local_path(ref).read_bytes() == b"cached bytes"
    assert len(downloads) == 2


def test_write_key_never_lands_a_second_version(store, raw, bucket):
    store.write_key("runs/r1/manifest.json", b"one")
    with pytest.raises(StoreError, match="immutable"):
        store.write_key("runs/r1/manifest.json", b"two")

    versions = raw.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/runs/r1/manifest.json")["Versions"]
    assert len(versions) == 1  # the refused write was stopped by If-None-Match, not undone afterwards
    assert store.read_key("runs/r1/manifest.json") == b"one"


def test_pointer_write_loses_when_the_etag_moved_after_the_read(endpoint, bucket, store):
    store.write_pointer("latest", b"r1", expected=None)
    rival = S3Store(bucket, PREFIX, endpoint_url=endpoint)
    original_put = store.client.put_object

    def put_after_rival(**kwargs):
        # The rival publishes between our read of the ETag and our conditional put: the content
        # check already passed, only If-Match can stop us now.
        rival.write_pointer("latest", b"r2-rival", expected=b"r1")
        return original_put(**kwargs)

    store.client.put_object = put_after_rival
    try:
        with pytest.raises(PointerConflict):
            store.write_pointer("latest", b"r2-ours", expected=b"r1")
    finally:
        store.client.put_object = original_put
    assert store.read_key("latest") == b"r2-rival"


def test_concurrent_publishers_one_wins_and_the_pointer_never_names_a_missing_object(endpoint, bucket, store):
    """Publishers each copy their model to runs/<id>/ and then swap `latest`; a reader watches."""
    store.write_pointer("latest", b"runs/r0/model.gguf", expected=None)
    store.copy_ref_to(store.put_bytes(b"model r0", name="model.gguf", kind="gguf"), "runs/r0/model.gguf")
    writers = 4
    barrier = threading.Barrier(writers)
    winners, losers, seen, problems = [], [], [], []
    done = threading.Event()

    def publish(run_id: str) -> None:
        mine = S3Store(bucket, PREFIX, client=store.client)  # boto3 clients are thread-safe
        ref = mine.put_bytes(f"model {run_id}".encode(), name="model.gguf", kind="gguf")
        key = f"runs/{run_id}/model.gguf"
        mine.copy_ref_to(ref, key)
        barrier.wait()
        try:
            mine.write_pointer("latest", key.encode(), expected=b"runs/r0/model.gguf")
            winners.append(key)
        except PointerConflict:
            losers.append(key)

    def watch() -> None:
        while not done.is_set():
            named = store.read_key("latest").decode()
            seen.append(named)
            if store.read_key(named) is None:
                problems.append(named)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=publish, args=(f"r{i}",)) for i in range(1, writers + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()

    assert len(winners) == 1 and len(losers) == writers - 1
    assert store.read_key("latest").decode() == winners[0]
    assert store.read_key(winners[0]) == f"model {winners[0].split('/')[1]}".encode()
    assert seen and not problems


def test_rejects_non_s3_locations():
    with pytest.raises(ValueError):
        S3Store.from_uri("/tmp/store")
