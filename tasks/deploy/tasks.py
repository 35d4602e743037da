"""Prefect task of the deploy stage.

Inputs: the run's artifacts, the gate decision, the served GGUF and Modelfile. Output: the published
manifest, the ``latest`` pointer, and the Ollama deployment (or the reason it was skipped).
Cached on everything but the run id: re-running an identical run publishes nothing new.
"""

from __future__ import annotations

from prefect import task

from tasks.core.caching import cache_key_ignoring
from tasks.core.recipe import DeployConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.settings import get_settings
from tasks.core.store import get_store
from tasks.deploy.publish import move_latest, publish_run


@task(cache_key_fn=cache_key_ignoring("run_id"), persist_result=True, result_serializer="json", retries=2,
      retry_delay_seconds=[2, 10])
def deploy_run(run_id: str, recipe: dict, artifacts: dict[str, ArtifactRef], lineage: dict, metrics: dict,
               gate: dict, gguf: ArtifactRef, modelfile: ArtifactRef, config: DeployConfig,
               json_schema: dict | None = None) -> StageOutput:
    """Publish the run; if the gate passed, move ``latest`` and deploy to Ollama when a host is set."""
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    store = get_store()
    manifest = publish_run(store, run_id, recipe, artifacts, lineage, metrics, gate)
    counts: dict = {"run_id": run_id, "published_files": len(manifest["files"])}
    if not gate.get("passed"):
        counts["latest"] = "unchanged: the gate failed"
        return StageOutput(artifacts={}, counts=counts)
    host = get_settings().ollama_host
    if host:
        from tasks.deploy.ollama import deploy_to_ollama

        deployment = deploy_to_ollama(host, config.model_name, run_id, store.local_path(gguf),
                                      store.local_path(modelfile).read_text(), config.smoke_prompts,
                                      json_schema=json_schema, expected_sha256=gguf.sha256)
        counts["ollama"] = deployment.model_dump(mode="json")
    else:
        counts["ollama"] = "skipped: no Ollama host configured (DISTILLERY_OLLAMA_HOST)"
        logger.info("Ollama deploy skipped: DISTILLERY_OLLAMA_HOST is not set")
    pointer = move_latest(store, recipe["name"], run_id)
    counts["latest"] = pointer["run_id"]
    counts["manifest_uri"] = f"{store.root}/runs/{run_id}/manifest.json"
    return StageOutput(artifacts={}, counts=counts)
