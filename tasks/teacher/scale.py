"""Scale-out: split generation into shards that run as Prefect tasks, on a Dask cluster if you like.

A flow that sets ``task_runner=dask_task_runner(...)`` and calls :func:`fan_out` sends each shard to
a Dask worker process. Each shard builds its own teacher in its worker (one provider per process, so a
local model loads once), with the run's rate limits and budget divided by the number of shards, and
shares the durable request cache (SQLite in the state folder, safe across processes on one machine).
What a shard does to an item is a module-level function ``fn(teacher, item)``, so it pickles by name.

Call :func:`fan_out` from a flow body: the flow's task runner decides where the shards run (a task
that submits tasks gets a thread pool of its own, not the flow's Dask cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from tasks.core.recipe import TeacherConfig
from tasks.teacher.teacher import TeacherStats

R = TypeVar("R")


class ShardResult(BaseModel):
    """A shard's results (in its items' order; shorter if the budget stopped it) and its account."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    shard: int
    results: list[Any]
    stats: TeacherStats


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


def run_shard(config: TeacherConfig, fn: Callable[[Any, Any], Any], items: Sequence[Any], shard: int,
              shards: int) -> ShardResult:
    """Run ``fn(teacher, item)`` over one shard's items with this process's provider and the shared cache."""
    from tasks.core.settings import get_settings
    from tasks.teacher.cache import RequestCache
    from tasks.teacher.teacher import Teacher, shared_provider

    cache = RequestCache(get_settings().cache_dir / "teacher.sqlite")
    teacher = Teacher.from_config(config, provider=shared_provider(config), cache=cache, share=1.0 / shards)
    try:
        results = teacher.map(lambda item: fn(teacher, item), list(items), desc=f"teacher shard {shard + 1}/{shards}")
    finally:
        cache.close()
    return ShardResult(shard=shard, results=results, stats=teacher.stats)


def _shard_task() -> Any:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    # The durable request cache is the persistence; Prefect keeps nothing of its own for a shard.
    return task(run_shard, name="teacher-shard", persist_result=False, cache_policy=NO_CACHE)


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


def fan_out(config: TeacherConfig, fn: Callable[[Any, Any], R], items: Sequence[Any],
            shards: int = 2) -> tuple[list[R], TeacherStats]:
    """Run ``fn(teacher, item)`` over ``items`` in ``shards`` Prefect tasks; results in input order.

    Returns the results (items skipped by a budget stop are left out) and the summed account.
    """
    if not items:
        return [], TeacherStats()
    chunks = split(items, shards)
    shard_task = _shard_task()
    futures = [shard_task.submit(config, fn, chunk, i, len(chunks)) for i, chunk in enumerate(chunks)]
    outcomes = sorted((f.result() for f in futures), key=lambda r: r.shard)
    stats = TeacherStats()
    results: list[R] = []
    for outcome in outcomes:
        results.extend(outcome.results)
        stats = stats.merge(outcome.stats)
    return results, stats
