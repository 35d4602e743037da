"""Scale-out: a stage's generation split into shards that run as Prefect tasks on a Dask cluster.

With ``teacher.shards`` > 1 the synthesize stage hands its generators a :class:`ShardedTeacher`. Its
:meth:`~ShardedTeacher.map` splits the items into contiguous slices and runs each as a
``teacher-shard`` Prefect task through Prefect's ``DaskTaskRunner`` (prefect-dask): on the cluster at
``teacher.dask_address``, or on a local cluster of ``shards`` worker processes started for the call.

The generators need not know. What they map is a closure that calls ``teacher.structured(...)``;
Dask pickles it with cloudpickle, and the sharded teacher it refers to pickles as "the teacher of the
shard this runs in" (:class:`_ShardTeacherRef`). Each shard builds that teacher in its worker (one
provider per process, so a local model loads once) with the run's rate limits and budget divided by
the number of shards, and the durable request cache of the state folder (SQLite, safe across the
processes of one machine). Each shard's account is added to the stage's teacher, so the stage report
counts every request wherever it was made.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from tasks.core.recipe import TeacherConfig
from tasks.teacher.progress import GenerationProgress
from tasks.teacher.teacher import Teacher, TeacherStats

R = TypeVar("R")
log = logging.getLogger("distillery.teacher")

# The teacher of the shard running in this context (set by :func:`run_shard` around its map).
_SHARD_TEACHER: contextvars.ContextVar[Teacher | None] = contextvars.ContextVar("distillery_shard_teacher",
                                                                                 default=None)


class ShardResult(BaseModel):
    """A shard's results (in its items' order; shorter if the budget stopped it) and its account."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    shard: int
    results: list[Any]
    stats: TeacherStats


def shard_teacher() -> Teacher:
    """The teacher of the shard this code runs in (inside ``fn`` of :func:`fan_out`)."""
    teacher = _SHARD_TEACHER.get()
    if teacher is None:
        raise RuntimeError("not inside a teacher shard")
    return teacher


class _ShardTeacherRef:
    """What a :class:`ShardedTeacher` unpickles to in a worker: the teacher of the shard running there."""

    def __getattr__(self, name: str) -> Any:
        return getattr(shard_teacher(), name)


def dask_task_runner(address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                     processes: bool = True, **cluster_kwargs: Any) -> Any:
    """A Prefect ``DaskTaskRunner``: on an existing cluster (``address``) or a local one it starts.

    Args:
        address: scheduler address of a running Dask cluster, e.g. ``tcp://10.0.0.5:8786``.
        n_workers: workers of a local cluster (one process each when ``processes``).
        threads_per_worker: threads per local worker (a shard's requests are async; one is enough).
        processes: local workers are processes (True) or threads in this process.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": threads_per_worker,
                                          "processes": processes, "dashboard_address": None, **cluster_kwargs})


def run_shard(config: TeacherConfig, fn: Callable[[Any], Any], items: Sequence[Any], shard: int, shards: int,
              concurrency: int | None = None, cache_path: str | None = None) -> ShardResult:
    """Run ``fn(item)`` over one shard's items with this shard's teacher (see the module docstring),
    sharing the request cache at ``cache_path`` (none: no cache)."""
    from tasks.teacher.cache import RequestCache
    from tasks.teacher.teacher import shared_provider

    cache = RequestCache(Path(cache_path)) if cache_path else None
    teacher = Teacher.from_config(config, provider=shared_provider(config), cache=cache, share=1.0 / shards)
    token = _SHARD_TEACHER.set(teacher)
    try:
        results = teacher.map(fn, list(items), concurrency=concurrency, desc=f"teacher shard {shard + 1}/{shards}")
    finally:
        _SHARD_TEACHER.reset(token)
        if cache is not None:
            cache.close()
    return ShardResult(shard=shard, results=results, stats=teacher.stats)


def split(items: Sequence[R], shards: int) -> list[list[R]]:
    """``items`` in ``shards`` contiguous, near-equal slices (fewer if there are fewer items)."""
    shards = max(1, min(shards, len(items)))
    size, extra = divmod(len(items), shards)
    out, start = [], 0
    for i in range(shards):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def fan_out(config: TeacherConfig, fn: Callable[[Any], R], items: Sequence[Any], shards: int = 2, *,
            address: str | None = None, concurrency: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            cache_path: str | None = None) -> tuple[list[R], TeacherStats]:
    """Run ``fn(item)`` over ``items`` in ``shards`` Prefect tasks on Dask; results in input order.

    The shards run on the cluster at ``address``, or on a local cluster of ``shards`` worker
    processes started for the call, through Prefect's ``DaskTaskRunner``: each is a ``teacher-shard``
    task run (a child of the task that called this, if any). ``fn`` reaches the shard's teacher
    through a :class:`ShardedTeacher` it closes over, or through :func:`shard_teacher`.
    ``progress(done, total)`` is called as shards finish. Returns the results (items skipped by a
    budget stop are left out) and the summed account. A shard's failure is raised.
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.futures import as_completed

    if not items:
        return [], TeacherStats()
    chunks = split(items, shards)
    # The durable request cache is the persistence; Prefect keeps nothing of its own for a shard.
    shard_task = task(run_shard, name="teacher-shard", persist_result=False, cache_policy=NO_CACHE)
    outcomes: list[ShardResult] = []
    done = 0
    # The runner is used directly, not as a flow's: a subflow would ship its own closure (with the
    # caller's progress bar) to every worker in its serialized run context.
    with dask_task_runner(address, n_workers=len(chunks)) as runner:
        futures = [runner.submit(shard_task, parameters={
            "config": config, "fn": fn, "items": chunk, "shard": i, "shards": len(chunks),
            "concurrency": concurrency, "cache_path": cache_path}) for i, chunk in enumerate(chunks)]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            done += len(chunks[outcome.shard])
            if progress is not None:
                progress(done, len(items))
    stats = TeacherStats()
    results: list[R] = []
    for outcome in sorted(outcomes, key=lambda outcome: outcome.shard):
        results.extend(outcome.results)
        stats.add(outcome.stats)
    return results, stats


class ShardedTeacher:
    """A teacher whose :meth:`map` fans out onto a Dask cluster; everything else is the stage's teacher.

    Args:
        teacher: the stage's teacher: single requests go to it, and the shards' accounts are added to it.
        config: the teacher section (``shards``, ``dask_address``, and what each shard's teacher is).

    The shards share the stage teacher's durable request cache.
    """

    def __init__(self, teacher: Teacher, config: TeacherConfig):
        self.teacher = teacher
        self.config = config
        self.cache_path = str(teacher.cache.path) if teacher.cache is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.teacher, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return _ShardTeacherRef, ()

    def __repr__(self) -> str:
        return f"ShardedTeacher({self.teacher!r}, shards={self.config.shards})"

    def map(self, fn: Callable[[Any], R], items: Sequence[Any], concurrency: int | None = None,
            progress: Callable[[int, int], None] | None = None, desc: str | None = None) -> list[R]:
        """:meth:`Teacher.map`, with the items split across ``config.shards`` Dask workers."""
        if not items:
            return []
        bar = None if progress is not None else GenerationProgress(
            len(items), desc or f"teacher {self.teacher.name} ({self.config.shards} shards)",
            summary=lambda: self.teacher.stats.summary())
        shown = 0

        def advance(done: int, total: int) -> None:
            nonlocal shown
            if bar is not None:
                bar.advance(done - shown)
            shown = done

        try:
            results, stats = fan_out(self.config, fn, items, self.config.shards, address=self.config.dask_address,
                                     concurrency=concurrency, cache_path=self.cache_path,
                                     progress=progress or advance)
        finally:
            if bar is not None:
                bar.close()
        self.teacher.absorb(stats)
        if stats.budget_stopped:
            log.warning("teacher %s stopped early: %s (%d of %d items done)", self.teacher.name, stats.stop_reason,
                        len(results), len(items))
        return results
