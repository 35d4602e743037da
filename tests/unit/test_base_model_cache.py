"""The machine-wide cache of base models converted from GGUF: converted once per file and transformers
release, shared by every state folder, never left half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.base import export
from tasks.core.settings import get_settings


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "model-cache"
    monkeypatch.setenv("DISTILLERY_MODEL_CACHE", str(root))
    get_settings.cache_clear()
    return root


@pytest.fixture()
def conversions(monkeypatch) -> list[Path]:
    """Stands in for transformers' ~50 s dequantization: writes a folder naming the file it read."""
    done: list[Path] = []

    def fake_convert(gguf: Path, out_dir: Path) -> None:
        done.append(gguf)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text(json.dumps({"from": gguf.read_text()}))

    monkeypatch.setattr(export, "_convert_gguf", fake_convert)
    return done


def gguf(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def test_a_file_is_converted_once_and_every_state_folder_shares_it(tmp_path, cache, conversions, monkeypatch):
    model = gguf(tmp_path, "m.gguf", "weights v1")
    first = export.export_base_model(str(model), tmp_path / "home-a" / "base")
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home-b"))
    get_settings.cache_clear()
    second = export.export_base_model(str(model), tmp_path / "home-b" / "base")
    assert conversions == [model]
    for folder in (first, second):
        assert json.loads((folder / "config.json").read_text()) == {"from": "weights v1"}
    import transformers

    from tasks.core.hashing import sha256_file

    name = f"m-{sha256_file(model)[:16]}-transformers-{transformers.__version__}"
    assert [p.name for p in cache.iterdir()] == [name] and export.cache_entry(model) == cache / name


def test_new_content_under_the_same_path_is_converted_again(tmp_path, cache, conversions):
    model = gguf(tmp_path, "m.gguf", "weights v1")
    old = export.converted_gguf(model)
    model.write_text("weights v2, re-downloaded")
    new = export.converted_gguf(model)
    assert new != old and len(conversions) == 2
    assert json.loads((new / "config.json").read_text()) == {"from": "weights v2, re-downloaded"}


def test_a_crashed_conversion_leaves_no_entry_and_the_next_call_converts(tmp_path, cache, conversions, monkeypatch):
    model = gguf(tmp_path, "m.gguf", "weights")

    def crash(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{")  # half written
        raise MemoryError("killed mid-way")

    with monkeypatch.context() as patch:
        patch.setattr(export, "_convert_gguf", crash)
        with pytest.raises(MemoryError):
            export.converted_gguf(model)
    assert list(cache.iterdir()) == []
    entry = export.converted_gguf(model)
    assert conversions == [model] and json.loads((entry / "config.json").read_text()) == {"from": "weights"}


def test_another_process_finishing_first_is_not_an_error(tmp_path, cache, conversions, monkeypatch):
    model = gguf(tmp_path, "m.gguf", "weights")
    real = export._convert_gguf

    def race(gguf: Path, out_dir: Path) -> None:
        real(gguf, out_dir)
        # the other process renames its finished copy into place while this one is still converting
        other = cache / ".other"
        real(gguf, other)
        other.rename(export.cache_entry(gguf))

    monkeypatch.setattr(export, "_convert_gguf", race)
    entry = export.converted_gguf(model)
    assert json.loads((entry / "config.json").read_text()) == {"from": "weights"}
    assert [p.name for p in cache.iterdir()] == [entry.name]

