"""Collect stage: every source of the recipe, each an incremental, cached task."""

from prefect import flow

from tasks.collect.sources import source_fingerprint
from tasks.collect.tasks import collect_source_task
from tasks.core.recipe import Recipe
from tasks.core.stage import StageResult, combine, run_task


@flow(name="collect")
def collect_flow(recipe: Recipe) -> StageResult:
    outputs, statuses = {}, []
    for index, source in enumerate(recipe.collect.sources):
        output, status = run_task(collect_source_task, source=source, fingerprint=source_fingerprint(source),
                                  recipe_name=recipe.name)
        outputs[f"{index}-{source.kind}"] = output
        statuses.append(status)
    if not outputs:
        raise ValueError(f"recipe {recipe.name} has no collect.sources")
    return StageResult(status=combine(statuses), outputs=outputs)
