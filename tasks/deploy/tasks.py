"""Prefect task of the deploy stage.

Inputs: the run's artifacts, the gate decision, the served GGUF and Modelfile. Output: the published
manifest, the ``latest`` pointer, and the Ollama deployment (or the reason it was skipped).
Cached on everything but the run id: re-running an identical run publishes nothing new.

Order: publish the run, deploy it to Ollama under its own tag and smoke-test it there (which moves
Ollama's ``latest``), then move the store's ``latest`` with a compare-and-swap. If another publisher
won that swap, Ollama's ``latest`` is pointed at the winner's tag again, so both keep naming the same
run, and the stage fails without retrying (a retry would overrule a model that was gated and deployed).
"""

from __future__ import annotations

from prefect import task

from tasks.core.caching import cache_key_ignoring
from tasks.core.recipe import DeployConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.settings import get_settings
from tasks.core.stage import retry_unless
from tasks.core.store import PointerConflict, get_store
from tasks.deploy.ollama import BlobDigestMismatch, SmokeTestFailed
from tasks.deploy.publish import move_latest, publish_run, read_latest
from tasks.teacher.llama_cpp import grammar_safe


@task(cache_key_fn=cache_key_ignoring("run_id"), persist_result=True, result_serializer="json", retries=2,
      retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless(PointerConflict, SmokeTestFailed, BlobDigestMismatch))
def deploy_run(run_id: str, recipe: dict, artifacts: dict[str, ArtifactRef], lineage: dict, metrics: dict,
               gate: dict, gguf: ArtifactRef, modelfile: ArtifactRef, config: DeployConfig,
               json_schema: dict | None = None) -> StageOutput:
    """Publish the run; if the gate passed, move ``latest`` and deploy to Ollama when a host is set."""
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    store = get_store()
    manifest = publish_run(store, run_id, recipe, artifacts, lineage, metrics, gate,
                           output_schema=grammar_safe(json_schema))
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
    try:
        pointer = move_latest(store, recipe["name"], run_id)
    except PointerConflict:
        winner = (read_latest(store, recipe["name"]) or {}).get("run_id")
        if host and winner:
            from tasks.deploy.ollama import OllamaDeployError, rollback_ollama

            try:
                rollback_ollama(host, config.model_name, to_tag=winner)
                logger.warning("another run (%s) moved latest first; Ollama's latest points at it again", winner)
            except OllamaDeployError as exc:
                logger.error("another run (%s) moved latest first, and Ollama's latest could not be pointed "
                             "back at it: %s", winner, exc)
        raise
    counts["latest"] = pointer["run_id"]
    counts["manifest_uri"] = f"{store.root}/runs/{run_id}/manifest.json"
    return StageOutput(artifacts={}, counts=counts)
