"""Cache keys for stage tasks: inputs (refs carry content hashes) + the task's source + a version.

Prefect's default INPUTS policy may fall back to cloudpickle for pydantic values, which is not stable
across processes; this key is canonical JSON, so the same inputs give the same key on any machine.
The source hashed is the whole stage package that defines the task (its records, plain functions and
wrappers), so an edit to a stage's logic invalidates that stage and nothing upstream of it.
"""

from __future__ import annotations

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


def source_hash_of(fn: Callable[..., Any], extra_modules: tuple[str, ...] = ()) -> str:
    """Hash of every module of the package that defines ``fn`` (a stage's records, plain functions
    and task wrappers live together in ``tasks/<stage>/``): editing any of them invalidates the stage."""
    source = inspect.getsourcefile(inspect.unwrap(fn))
    if not source:
        return ""
    package = Path(source).parent
    files = sorted(str(p) for p in package.glob("*.py"))
    for module in extra_modules:
        extra = inspect.getsourcefile(__import__(module, fromlist=["_"]))
        if extra and extra not in files:
            files.append(extra)
    return sha256_json([(Path(f).name, _source_hash(f)) for f in files])


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
