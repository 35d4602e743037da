"""Pairs stage: respond -> critique -> improve -> evaluate -> DPO pairs (skipped when disabled).

On-policy (``pairs.on_policy``), the model now in production (the GGUF the store's ``latest`` pointer
names) writes the first responses; before anything is deployed the base model does, and the stage's
counts say which (``respondent``).
"""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import StageOutput
from tasks.core.stage import StageResult, run_task
from tasks.core.store import get_store
from tasks.deploy.publish import production_gguf
from tasks.pairs.tasks import build_preference_pairs


@flow(name="pairs")
def pairs_flow(recipe: Recipe, dataset: StageOutput) -> StageResult:
    if not recipe.pairs.enabled or recipe.train.method == "sft":
        return StageResult(status="skipped", reason="pairs.enabled is false or train.method is sft")
    production = production_gguf(get_store(), recipe.name, recipe.package.serve) if recipe.pairs.on_policy else None
    output, status = run_task(build_preference_pairs, train=dataset["train"], student_gguf=recipe.train.base_model,
                              config=recipe.pairs, teacher_config=recipe.teacher, production=production)
    return StageResult(status=status, outputs={"pairs": output}, teacher_calls=output.teacher_calls)
