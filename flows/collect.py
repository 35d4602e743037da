"""Collect stage: every source of the recipe, each an incremental, cached task.

A source whose service fails this week (after its retries) does not stop the run: its last snapshot
from the store stands in for it, and the stage's ``reason`` says which source failed and how old the
snapshot is. A wrong recipe entry or a malformed local file still fails the stage, as does a run in
which no source has anything to give.
"""

from prefect import flow
from prefect.logging import get_run_logger

from tasks.collect.common import CollectError
from tasks.collect.sources import source_fingerprint
from tasks.collect.tasks import PERMANENT_ERRORS, collect_source_task, previous_snapshot
from tasks.core.recipe import Recipe
from tasks.core.stage import StageResult, combine, run_task


@flow(name="collect")
def collect_flow(recipe: Recipe) -> StageResult:
    if not recipe.collect.sources:
        raise ValueError(f"recipe {recipe.name} has no collect.sources")
    outputs, statuses, degraded = {}, [], []
    for index, source in enumerate(recipe.collect.sources):
        name = f"{index}-{source.kind}"
        try:
            output, status = run_task(collect_source_task, source=source, fingerprint=source_fingerprint(source),
                                      recipe_name=recipe.name)
        except PERMANENT_ERRORS:
            raise  # the recipe or its file is wrong: carrying on would hide it until the next week
        except Exception as exc:  # noqa: BLE001 - a failed service is reported, the run goes on
            error = f"{type(exc).__name__}: {exc}"[:300]
            output, status = previous_snapshot(source, recipe.name), "completed"
            if output is None:
                degraded.append(f"source {name} failed and has no earlier snapshot ({error})")
                continue
            degraded.append(f"source {name} failed; its snapshot of {output.counts['collected_at']} "
                            f"stands in ({error})")
        outputs[name] = output
        statuses.append(status)
    if not outputs:
        raise CollectError(f"recipe {recipe.name}: every source failed: " + "; ".join(degraded))
    reason = None
    if degraded:
        reason = "degraded: " + "; ".join(degraded)
        get_run_logger().warning("collect %s", reason)
    return StageResult(status=combine(statuses), outputs=outputs, reason=reason)
