"""The artifact store contract, run against every implementation: LocalStore and S3Store.

S3Store runs against moto's real HTTP S3 server, so conditional writes go over the wire.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tasks.core.hashing import sha256_bytes, sha256_dir
from tasks.core.refs import ArtifactRef
from tasks.core.settings import get_settings
from tasks.core.store import ArtifactStore, LocalStore, PointerConflict, StoreError
from tests.fakes.s3 import moto_s3_endpoint, new_bucket

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_endpoint() as url:
        yield url


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from tasks.core.s3store import S3Store

    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(new_bucket(endpoint), "team/distillery", endpoint_url=endpoint)


def _make_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _missing_ref(ref: ArtifactRef) -> ArtifactRef:
    other = "0" * 64
    return ref.model_copy(update={"uri": ref.uri.replace(ref.sha256, other), "sha256": other})


def test_file_round_trip(store, tmp_path):
    source = tmp_path / "train.jsonl"
    source.write_bytes(b'{"messages": []}\n' * 3)

    ref = store.put_file(source, kind="dataset", rows=3)

    assert ref.sha256 == sha256_bytes(source.read_bytes())
    assert (ref.bytes, ref.kind, ref.rows, ref.name, ref.is_dir) == (source.stat().st_size, "dataset", 3, "train.jsonl", False)
    assert ref.uri.startswith(store.root) and f"/objects/{ref.sha256[:2]}/{ref.sha256}/train.jsonl" in ref.uri
    assert store.local_path(ref).read_bytes() == source.read_bytes()
    assert store.verify(ref)


def test_same_bytes_share_one_object_and_names_are_kept(store, tmp_path):
    first = store.put_bytes(b"same", name="a.txt", kind="report")
    again = store.put_bytes(b"same", name="a.txt", kind="report")
    renamed = store.put_bytes(b"same", name="b.txt", kind="report")

    assert again == first
    assert renamed.sha256 == first.sha256 and renamed.uri != first.uri
    assert store.local_path(renamed).name == "b.txt"


def test_json_round_trip(store):
    value = {"metric": 0.5, "labels": ["a", "b"], "nested": {"x": None}}
    ref = store.put_json(value, name="report.json", kind="report")
    assert store.read_json(ref) == value


def test_folder_round_trip(store, tmp_path):
    folder = _make_dir(
        tmp_path / "adapter",
        {"adapter_config.json": b"{}", "adapter_model.safetensors": b"\x00" * 1000, "sub/tok.json": b"[1]"},
    )

    ref = store.put_dir(folder, kind="adapter")

    assert ref.is_dir and ref.sha256 == sha256_dir(folder) and ref.bytes == 1000 + 2 + 3
    local = store.local_path(ref)
    assert local.name == "adapter"
    assert sha256_dir(local) == ref.sha256
    assert (local / "sub" / "tok.json").read_bytes() == b"[1]"
    assert store.verify(ref)
    assert store.put_dir(folder, kind="adapter") == ref


def test_missing_artifacts(store):
    ref = store.put_bytes(b"present", name="x.txt", kind="report")
    missing = _missing_ref(ref)

    assert not store.verify(missing)
    with pytest.raises(StoreError):
        store.local_path(missing)
    assert store.read_key("runs/nothing/here.json") is None


def test_write_key_is_immutable(store):
    uri = store.write_key("runs/r1/manifest.json", b'{"a": 1}')

    assert uri.startswith(store.root)
    assert store.write_key("runs/r1/manifest.json", b'{"a": 1}') == uri  # same bytes: a no-op
    with pytest.raises(StoreError, match="immutable"):
        store.write_key("runs/r1/manifest.json", b'{"a": 2}')
    assert store.read_key("runs/r1/manifest.json") == b'{"a": 1}'


def test_copy_ref_to_publishes_files_and_folders(store, tmp_path):
    file_ref = store.put_bytes(b"GGUF...", name="model.gguf", kind="gguf")
    folder_ref = store.put_dir(_make_dir(tmp_path / "d", {"a": b"1", "b/c": b"2"}), kind="adapter")

    file_uri = store.copy_ref_to(file_ref, "runs/r1/model.gguf")
    folder_uri = store.copy_ref_to(folder_ref, "runs/r1/adapter")

    assert store.read_key("runs/r1/model.gguf") == b"GGUF..."
    assert store.read_key("runs/r1/adapter/b/c") == b"2"
    assert store.copy_ref_to(file_ref, "runs/r1/model.gguf") == file_uri  # idempotent
    assert store.copy_ref_to(folder_ref, "runs/r1/adapter") == folder_uri
    other = store.put_bytes(b"other", name="model.gguf", kind="gguf")
    with pytest.raises(StoreError):
        store.copy_ref_to(other, "runs/r1/model.gguf")
    other_dir = store.put_dir(_make_dir(tmp_path / "e", {"a": b"9"}), kind="adapter")
    with pytest.raises(StoreError):
        store.copy_ref_to(other_dir, "runs/r1/adapter")
    with pytest.raises(StoreError):
        store.copy_ref_to(_missing_ref(file_ref), "runs/r2/model.gguf")
    assert store.read_key("runs/r1/model.gguf") == b"GGUF..."


def test_write_pointer_is_compare_and_swap(store):
    store.write_pointer("latest", b"r1", expected=None)
    with pytest.raises(PointerConflict):
        store.write_pointer("latest", b"r2", expected=None)  # it exists now
    with pytest.raises(PointerConflict):
        store.write_pointer("latest", b"r2", expected=b"r0")  # stale view
    store.write_pointer("latest", b"r2", expected=b"r1")

    assert store.read_key("latest") == b"r2"
    with pytest.raises(PointerConflict):
        store.write_pointer("missing-pointer", b"r1", expected=b"r0")


@pytest.mark.parametrize("expected", [None, b"r0"], ids=["create", "swap"])
def test_concurrent_pointer_writers_exactly_one_wins(store, expected):
    if expected is not None:
        store.write_pointer("latest", expected, expected=None)
    writers = 5
    barrier = threading.Barrier(writers)
    winners: list[bytes] = []
    losers: list[bytes] = []

    def publish(value: bytes) -> None:
        barrier.wait()
        try:
            store.write_pointer("latest", value, expected=expected)
            winners.append(value)
        except PointerConflict:
            losers.append(value)

    threads = [threading.Thread(target=publish, args=(f"run-{i}".encode(),)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1 and len(losers) == writers - 1
    assert store.read_key("latest") == winners[0]
