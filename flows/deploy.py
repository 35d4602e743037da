"""Deploy stage: publish the run, then (gate passed) move latest and serve on Ollama."""

from prefect import flow

from tasks.core.recipe import Recipe
from tasks.core.refs import ArtifactRef
from tasks.core.stage import StageResult, run_task
from tasks.deploy.tasks import deploy_run
from tasks.synthesize.outputs import output_schema


@flow(name="deploy")
def deploy_flow(recipe: Recipe, run_id: str, artifacts: dict[str, ArtifactRef], lineage: dict, metrics: dict,
                gate: dict, gguf: ArtifactRef, modelfile: ArtifactRef) -> StageResult:
    output, status = run_task(deploy_run, run_id=run_id, recipe=recipe.model_dump(mode="json", by_alias=True),
                              artifacts=artifacts, lineage=lineage, metrics=metrics, gate=gate, gguf=gguf,
                              modelfile=modelfile, config=recipe.deploy,
                              json_schema=output_schema(recipe.synthesize.generator, recipe.output_format))
    if not gate.get("passed"):
        return StageResult(status="skipped", reason="gate failed: " + "; ".join(gate.get("failures", [])),
                           outputs={"deploy": output})
    return StageResult(status=status, outputs={"deploy": output})
