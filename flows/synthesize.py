"""Synthesize stage: collected records -> SFT examples (human and teacher-written), and for a recipe
with variants, each variant's examples."""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import StageOutput
from tasks.core.stage import StageResult, combine, run_task
from tasks.synthesize.tasks import synthesize_examples
from tasks.synthesize.variants import select_variant_examples, variant_output


@flow(name="synthesize")
def synthesize_flow(recipe: Recipe, collected: dict[str, StageOutput]) -> StageResult:
    records = [output["records"] for output in collected.values()]
    output, status = run_task(synthesize_examples, records=records, config=recipe.synthesize,
                              teacher_config=recipe.teacher)
    outputs, statuses = {"examples": output}, [status]
    for variant in recipe.variants:  # one model per variant: each gets its own examples
        outputs[variant_output(variant)], variant_status = run_task(
            select_variant_examples, examples=output["examples"], variant=variant)
        statuses.append(variant_status)
    return StageResult(status=combine(statuses), outputs=outputs,
                       teacher_calls=output.teacher_calls if status == "completed" else 0)
