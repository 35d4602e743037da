"""Curate stage: the student's base model (and its tokenizer alone, for token counts), limits, dedup and
splits, then the baselines: the untrained base, and the model now in production when there is one,
scored on the held-out set before any training (validate compares against them; its own calls are
cache hits)."""

from prefect import flow

from tasks.base.tasks import prepare_base_model
from tasks.core.recipe import Recipe
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import StageResult, combine, run_task
from tasks.curate.tasks import curate_dataset
from tasks.validate.tasks import evaluate_model, evaluation_params


@flow(name="curate")
def curate_flow(recipe: Recipe, examples: StageOutput, production: ArtifactRef | None = None) -> StageResult:
    """``production``: the GGUF the store's ``latest`` pointer names (scored as ``production_baseline``)."""
    base, base_status = run_task(prepare_base_model, base_model=recipe.train.base_model,
                                 trust_remote_code=recipe.train.trust_remote_code)
    output, status = run_task(curate_dataset, examples=examples["examples"], tokenizer=base["tokenizer"],
                              config=recipe.curate, recipe_name=recipe.name)
    baseline, baseline_status = run_task(evaluate_model, heldout=output["heldout"], builtin=recipe.train.base_model,
                                         **evaluation_params(recipe))
    outputs = {"dataset": output, "base": base, "baseline": baseline}
    statuses = [base_status, status, baseline_status]
    if production is not None:
        outputs["production_baseline"], production_status = run_task(
            evaluate_model, heldout=output["heldout"], model=production, **evaluation_params(recipe))
        statuses.append(production_status)
    return StageResult(status=combine(statuses), outputs=outputs)
