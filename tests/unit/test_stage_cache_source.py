"""A stage's cache key hashes the code that decides what it computes: its package and what that imports."""

from __future__ import annotations

from pathlib import Path

from tasks.core import caching
from tasks.core.caching import source_files_of, source_hash_of
from tasks.curate.tasks import curate_dataset
from tasks.validate.tasks import evaluate_model

ROOT = Path(caching.__file__).resolve().parents[2]


def _relative(fn) -> set[str]:
    return {str(Path(f).relative_to(ROOT)) for f in source_files_of(fn)}


def test_a_stage_hashes_the_modules_it_imports_from_other_packages_and_no_others():
    validate = _relative(evaluate_model.fn)
    # evaluate.py decodes JSON with the teacher package's grammar; outputs.py gives the schema.
    assert {"tasks/validate/evaluate.py", "tasks/teacher/llama_cpp.py", "tasks/synthesize/outputs.py",
            "tasks/core/recipe.py"} <= validate
    assert not any(f.startswith(("tasks/train/", "tasks/deploy/", "tasks/collect/")) for f in validate)
    curate = _relative(curate_dataset.fn)
    assert "tasks/curate/filters.py" in curate and not any(f.startswith("tasks/validate/") for f in curate)


def test_editing_an_imported_module_changes_the_hash(monkeypatch):
    before = source_hash_of(evaluate_model.fn)
    grammar = str(ROOT / "tasks/teacher/llama_cpp.py")
    real = caching._source_hash
    monkeypatch.setattr(caching, "_source_hash", lambda path: "edited" if path == grammar else real(path))
    assert source_hash_of(evaluate_model.fn) != before
    monkeypatch.setattr(caching, "_source_hash", lambda path: "edited" if path.endswith("tasks/train/sft.py") else real(path))
    assert source_hash_of(evaluate_model.fn) == before
