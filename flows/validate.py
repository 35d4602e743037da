"""Validate stage: the served GGUF vs the base (and production) on held-out data, the teacher's
win rate when the recipe asks for a judge, then the gate."""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import StageResult, combine, run_task
from tasks.validate.tasks import decide_and_report, evaluate_model, evaluation_params, judge_against_base


@flow(name="validate")
def validate_flow(recipe: Recipe, dataset: StageOutput, package: StageOutput,
                  production_gguf: ArtifactRef | None = None, pairs: StageOutput | None = None) -> StageResult:
    common = {"heldout": dataset["heldout"], **evaluation_params(recipe)}
    served = package[f"gguf_{recipe.package.serve}"]
    if production_gguf is not None and production_gguf.sha256 == served.sha256:
        production_gguf = None  # production already is this model: nothing to compare against
    candidate, s1 = run_task(evaluate_model, model=served, **common)
    base, s2 = run_task(evaluate_model, builtin=recipe.train.base_model, **common)  # the curate baseline, cached
    statuses, production, judge = [s1, s2], None, None
    if production_gguf is not None:
        production, s3 = run_task(evaluate_model, model=production_gguf, **common)
        statuses.append(s3)
    if recipe.validate_.judge:
        judge, s5 = run_task(judge_against_base, heldout=dataset["heldout"], candidate=candidate["predictions"],
                             base=base["predictions"], config=recipe.validate_, teacher_config=recipe.teacher)
        statuses.append(s5)
    decision, s4 = run_task(decide_and_report, recipe_name=recipe.name, gate=recipe.validate_.gate,
                            candidate=candidate.counts, base=base.counts,
                            production=production.counts if production else None,
                            judge=judge.counts if judge else None, pairs=pairs.counts if pairs else None)
    outputs = {"candidate": candidate, "base": base, "decision": decision}
    if production:
        outputs["production"] = production
    if judge:
        outputs["judge"] = judge
    calls = judge.teacher_calls if judge and statuses[-1] == "completed" else 0
    return StageResult(status=combine(statuses + [s4]), outputs=outputs, teacher_calls=calls)
