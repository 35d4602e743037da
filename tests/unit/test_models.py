"""Built-in models: one package holds the file, or several hold its parts, joined once and checked."""

from __future__ import annotations

import hashlib
import sys

import pytest

from tasks.core import models
from tasks.core.models import BuiltinModel, ModelNotFound, join_parts, resolve_gguf
from tasks.core.settings import get_settings


@pytest.fixture
def parts_model(tmp_path, monkeypatch):
    """A model in three part packages on sys.path, and a fresh model cache."""
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 5000, b"c" * 10]
    for i, chunk in enumerate(chunks, start=1):
        package = tmp_path / "site" / f"fake_model_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("DISTILLERY_MODEL_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    whole = b"".join(chunks)
    model = BuiltinModel(packages=tuple(f"fake_model_part{i}" for i in range(1, 4)), filename="fake.gguf",
                         install="pip install fake-model", sha256=hashlib.sha256(whole).hexdigest(), size=len(whole))
    monkeypatch.setitem(models.BUILTIN_GGUF, "fake-model", model)
    yield model, whole, tmp_path
    get_settings.cache_clear()
    for i in range(1, 4):
        sys.modules.pop(f"fake_model_part{i}", None)


def test_parts_are_joined_once_into_the_model_cache(parts_model):
    _, whole, tmp_path = parts_model
    path = resolve_gguf("fake-model")
    assert path.read_bytes() == whole
    assert path.parent == tmp_path / "cache" / "gguf" and path.name.endswith("fake.gguf")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    mtime = path.stat().st_mtime_ns
    assert resolve_gguf("fake-model") == path and path.stat().st_mtime_ns == mtime  # not joined again
    path.write_bytes(whole[:100])  # a truncated copy (a full disk, a killed copy) is joined again
    assert resolve_gguf("fake-model").read_bytes() == whole


def test_parts_that_do_not_match_the_checksum_leave_nothing(parts_model, monkeypatch):
    model, _, tmp_path = parts_model
    monkeypatch.setitem(models.BUILTIN_GGUF, "fake-model", BuiltinModel(
        packages=model.packages, filename=model.filename, install=model.install, sha256="0" * 64))
    with pytest.raises(ModelNotFound, match="join to sha256 .* not 0000"):
        resolve_gguf("fake-model")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_missing_part_package_names_the_install_command(parts_model, monkeypatch):
    model, _, _ = parts_model
    monkeypatch.setitem(models.BUILTIN_GGUF, "fake-model", BuiltinModel(
        packages=(*model.packages, "fake_model_part_missing"), filename=model.filename, install=model.install,
        sha256=model.sha256))
    with pytest.raises(ModelNotFound, match=r"needs the 'fake_model_part_missing' package \(pip install fake-model\)"):
        resolve_gguf("fake-model")


def test_join_parts_joins_in_order(tmp_path):
    (tmp_path / "a").write_bytes(b"12")
    (tmp_path / "b").write_bytes(b"34")
    target = tmp_path / "out" / "m.gguf"
    assert join_parts([tmp_path / "a", tmp_path / "b"], target, hashlib.sha256(b"1234").hexdigest()).read_bytes() \
        == b"1234"


def test_builtin_names_and_paths_resolve_and_unknown_ones_are_named(tmp_path):
    assert resolve_gguf("smollm2-135m").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    local = tmp_path / "m.gguf"
    local.write_bytes(b"GGUF")
    assert resolve_gguf(str(local)) == local.resolve()
    with pytest.raises(ModelNotFound, match="not a built-in name .*qwen2.5-coder-1.5b"):
        resolve_gguf("no-such-model")


def test_a_model_in_parts_must_name_its_checksum():
    with pytest.raises(ValueError, match="needs its sha256"):
        BuiltinModel(packages=("a", "b"), filename="m.gguf", install="pip install m")
