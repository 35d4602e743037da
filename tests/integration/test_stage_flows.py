"""Stage flows under prefect_test_harness: caching by content, and a corrupted artifact is rebuilt."""

from __future__ import annotations

import pytest

from tasks.core.recipe import load_recipe
from tasks.core.store import get_store

pytestmark = pytest.mark.integration

RECIPE = ["synthesize.max_items=1", "teacher.max_tokens=64", "synthesize.source_chars=400",
          "collect.sources.1.limit=5"]


def test_collect_and_synthesize_cache_and_rebuild(prefect_harness):
    from flows.collect import collect_flow
    from flows.synthesize import synthesize_flow

    recipe = load_recipe("stats-qa", RECIPE)
    first = collect_flow(recipe)
    assert first.status == "completed"
    counts = {name: out.counts for name, out in first.outputs.items()}
    assert counts["0-stackexchange_dump"]["collected"] > 0
    assert counts["2-arxiv_pdfs"]["collected"] > 0

    synthesized = synthesize_flow(recipe, first.outputs)
    assert synthesized.status == "completed"
    examples = synthesized.output("examples")
    assert examples.counts["examples"] > 0
    assert synthesized.teacher_calls == examples.counts["requests"] >= 1

    # Unchanged inputs: both stages come from the cache and the teacher is not called.
    again = collect_flow(recipe)
    assert again.status == "cached"
    cached = synthesize_flow(recipe, again.outputs)
    assert cached.status == "cached"
    assert cached.output("examples")["examples"] == examples["examples"]

    # A corrupted artifact is never passed on: the task runs again and rebuilds the same bytes
    # (the teacher's durable cache answers, so no new teacher request is paid for).
    path = get_store().local_path(examples["examples"])
    path.write_text("corrupted\n")
    rebuilt = synthesize_flow(recipe, again.outputs)
    assert rebuilt.status == "completed"
    assert rebuilt.output("examples")["examples"].sha256 == examples["examples"].sha256
    assert rebuilt.output("examples").counts["requests"] == 0
    assert rebuilt.output("examples").counts["cache_hits"] >= 1
    assert get_store().verify(examples["examples"])


def test_synthesize_fans_out_onto_dask_workers_and_writes_what_one_process_writes(prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.collect import collect_flow
    from flows.synthesize import synthesize_flow

    settings = [*RECIPE, "synthesize.max_items=4", "synthesize.include_human=false"]
    collected = collect_flow(load_recipe("stats-qa", settings))
    sharded = synthesize_flow(load_recipe("stats-qa", [*settings, "teacher.shards=2"]), collected.outputs)
    assert sharded.status == "completed"
    out = sharded.output("examples")
    # Every request the workers made is in the stage's report.
    assert out.counts["completions"] >= 4 and sharded.teacher_calls == out.counts["requests"]
    assert out.counts["examples"] + out.counts["rejected"] == 4

    # The shards ran as Prefect task runs on Dask, children of the synthesize task's run.
    with get_client(sync_client=True) as client:
        shards = client.read_task_runs(task_run_filter=TaskRunFilter(name={"like_": "teacher-shard"}),
                                       sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=2)
        parents = {client.read_task_run(parent.id).name.rsplit("-", 1)[0]
                   for shard in shards for parent in shard.task_inputs["__parents__"]}
    assert [shard.state_type for shard in shards] == [StateType.COMPLETED] * 2
    assert parents == {"synthesize_examples"}

    # Sharding is operational: one process reuses the stage as it is...
    single = load_recipe("stats-qa", [*settings, "teacher.shards=1"])
    assert synthesize_flow(single, collected.outputs).status == "cached"
    # ...and, made to run again, writes the same bytes from the request cache the workers filled.
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        again = synthesize_flow(single, collected.outputs)
    assert again.status == "completed"
    assert again.output("examples")["examples"].sha256 == out["examples"].sha256
    assert again.output("examples").counts["completions"] == 0
