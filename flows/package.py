"""Package stage: merge the final adapter, convert to GGUF, quantize, write the Modelfile."""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import StageOutput
from tasks.core.stage import StageResult, run_task
from tasks.package.tasks import package_model


@flow(name="package")
def package_flow(recipe: Recipe, base: StageOutput, adapter: StageOutput) -> StageResult:
    output, status = run_task(package_model, base_model=base["model"], adapters=[adapter["adapter"]],
                              config=recipe.package, system_prompt=recipe.synthesize.system_prompt)
    return StageResult(status=status, outputs={"package": output})
