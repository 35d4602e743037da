"""Cache keys for stage tasks: inputs (refs carry content hashes) + the task's source + a version.

Prefect's default INPUTS policy may fall back to cloudpickle for pydantic values, which is not stable
across processes; this key is canonical JSON, so the same inputs give the same key on any machine.
The source hashed is the whole stage package that defines the task (its records, plain functions and
wrappers) and every ``tasks`` module it imports, so an edit to a stage's logic, or to code it uses
from elsewhere, invalidates that stage and nothing upstream of it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.core.hashing import sha256_file, sha256_file_cached, sha256_json
from tasks.core.recipe import Section

# Bump to invalidate every cached result at once (a change to record formats, say).
CACHE_VERSION = "1"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Section):
        return value.identity()  # a recipe section without the fields that only say how it runs
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@lru_cache(maxsize=256)
def _source_hash(path: str) -> str:
    return sha256_file(Path(path))


@lru_cache(maxsize=512)
def _imported_task_files(path: str) -> frozenset[str]:
    """Files of the ``tasks`` modules that the module at ``path`` imports, anywhere in it (function-level
    imports too: stages import their helpers lazily)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    files = set()
    for name in names:
        if name.split(".")[0] != "tasks":
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None  # a name imported from a module, not a module
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            files.add(str(Path(spec.origin).resolve()))
    return frozenset(files)


def source_files_of(fn: Callable[..., Any]) -> list[str]:
    """The files whose source decides what ``fn``'s stage computes: every module of the package that
    defines it (a stage's records, plain functions and task wrappers live together in
    ``tasks/<stage>/``) and every ``tasks`` module those import, transitively (the recipe models,
    the teacher, the llama.cpp grammar code validate decodes JSON with...)."""
    source = inspect.getsourcefile(inspect.unwrap(fn))
    return list(_package_closure(str(Path(source).parent))) if source else []


@lru_cache(maxsize=64)
def _package_closure(package: str) -> tuple[str, ...]:
    """The package's modules and every ``tasks`` module they import, transitively; once per process,
    like the file hashes (a cache key is computed for every task run)."""
    pending = [str(p.resolve()) for p in Path(package).glob("*.py")]
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path not in seen:
            seen.add(path)
            pending.extend(_imported_task_files(path) - seen)
    return tuple(sorted(seen))


def source_hash_of(fn: Callable[..., Any]) -> str:
    """Hash of :func:`source_files_of`: editing any of them invalidates the stage, and nothing else does."""
    root = Path(__file__).resolve().parents[2]  # the folder that holds the ``tasks`` package
    return sha256_json([(_relative(Path(f), root), _source_hash(f)) for f in source_files_of(fn)])


def _relative(path: Path, root: Path) -> str:
    """``path`` from ``root`` (the key must not depend on where the code is installed), else its name."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def local_teacher_hashes(parameters: dict[str, Any]) -> dict[str, str]:
    """Parameter name -> content hash of the GGUF of each local (llama_cpp) teacher among ``parameters``.

    A teacher config names its model by a path or built-in name; the file behind the name can change
    (re-downloaded, re-quantized), and then what the stage wrote with it is stale.
    """
    from tasks.core.models import ModelNotFound, resolve_gguf
    from tasks.core.recipe import TeacherConfig

    hashes = {}
    for name, value in parameters.items():
        if isinstance(value, TeacherConfig) and value.provider == "llama_cpp":
            try:
                path = resolve_gguf(value.model)
            except ModelNotFound:
                continue  # the task itself reports the missing model
            hashes[name] = sha256_file_cached(path)
    return hashes


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: canonical inputs + the defining module's source + CACHE_VERSION, and
    the content of any local teacher model among the inputs."""
    task = context.task
    fn = task.fn
    key: dict[str, Any] = {
        "task": f"{fn.__module__}.{fn.__qualname__}",
        "params": _jsonable(parameters),
        "source": source_hash_of(fn),
        "version": CACHE_VERSION,
    }
    models = local_teacher_hashes(parameters)
    if models:
        key["models"] = models
    return sha256_json(key)


def weekly_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Like :func:`stage_cache_key`, plus the ISO week: for sources that change outside our control.

    A weekly run collects again; a re-run or backfill in the same week reuses what was collected.
    """
    year, week, _ = date.today().isocalendar()
    return sha256_json({"base": stage_cache_key(context, parameters), "week": f"{year}-W{week:02d}"})


def cache_key_ignoring(*names: str) -> Callable[[Any, dict[str, Any]], str]:
    """A :func:`stage_cache_key` that leaves some parameters out (a run id, say)."""

    def key(context: Any, parameters: dict[str, Any]) -> str:
        return stage_cache_key(context, {k: v for k, v in parameters.items() if k not in names})

    return key
