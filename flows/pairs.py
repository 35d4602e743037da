"""Pairs stage: respond -> critique -> improve -> evaluate -> DPO pairs (skipped when disabled).

On-policy (``pairs.on_policy``), the model now in production (the GGUF the store's ``latest`` pointer
names) writes the first responses; before anything is deployed the base model does, and the stage's
counts say which (``respondent``).
"""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import StageResult, run_task
from tasks.pairs.tasks import build_preference_pairs


@flow(name="pairs")
def pairs_flow(recipe: Recipe, dataset: StageOutput, production: ArtifactRef | None = None) -> StageResult:
    """``production``: the GGUF the store's ``latest`` pointer names (the respondent when on-policy)."""
    if not recipe.pairs.enabled or recipe.train.method == "sft":
        return StageResult(status="skipped", reason="pairs.enabled is false or train.method is sft")
    output, status = run_task(build_preference_pairs, train=dataset["train"], student_gguf=recipe.train.base_model,
                              config=recipe.pairs, teacher_config=recipe.teacher, min_chars=recipe.curate.min_chars,
                              production=production if recipe.pairs.on_policy else None)
    return StageResult(status=status, outputs={"pairs": output}, teacher_calls=output.teacher_calls)
