"""Prefect tasks of the train stage.

``train_adapter``: base model + dataset (+ an adapter to continue) -> LoRA adapter, metrics, loss curve.
"""

from __future__ import annotations

import shutil

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.core.caching import stage_cache_key
from tasks.core.hashing import sha256_json
from tasks.core.recipe import TrainConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.settings import get_settings
from tasks.core.store import get_store


def training_run_key(method: str, base: ArtifactRef, data: ArtifactRef, init: ArtifactRef | None,
                     train: TrainConfig) -> str:
    """Identifies one training run: checkpoints are only ever restored into the same run."""
    return sha256_json({"method": method, "base": base.sha256, "data": data.sha256,
                        "init": init.sha256 if init else None, "train": train.identity()})


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json", retries=1,
      retry_delay_seconds=5)
def train_adapter(method: str, base_model: ArtifactRef, data: ArtifactRef, train: TrainConfig,
                  eval_data: ArtifactRef | None = None, init_adapter: ArtifactRef | None = None) -> StageOutput:
    """LoRA SFT or DPO with the recipe's settings, resumable after a crash (a retry resumes too)."""
    from prefect.logging import get_run_logger

    from tasks.train.curves import loss_table, plot_losses

    logger = get_run_logger()
    store = get_store()
    run_key = training_run_key(method, base_model, data, init_adapter, train)
    work = get_settings().work_dir / "train" / run_key[:16]
    checkpoints = work / "checkpoints"
    output = work / f"{method}-output"
    shutil.rmtree(output, ignore_errors=True)
    if train.backend == "sagemaker":
        from tasks.train.sagemaker import run_sagemaker_training

        metrics = run_sagemaker_training(method, train, run_key, base_model, data, eval_data, init_adapter, output,
                                         log=logger.info)
    else:
        from tasks.train.local import run_entrypoint

        metrics = run_entrypoint(
            method, {"train": train.model_dump(mode="json"), "run_key": run_key},
            model_dir=store.local_path(base_model), data=store.local_path(data), output_dir=output,
            checkpoint_dir=checkpoints, eval_data=store.local_path(eval_data) if eval_data else None,
            init_adapter=store.local_path(init_adapter) if init_adapter else None, log=logger.info)
    curve = plot_losses(metrics["log_history"], f"{method.upper()} loss", work / f"{method}-loss.png")
    adapter = store.put_dir(output, kind="adapter", name=f"{method}-adapter")
    curve_ref = store.put_file(curve, kind="chart")
    create_markdown_artifact(
        key=f"{method}-loss", description=f"{method.upper()} loss curve",
        markdown=f"## {method.upper()} training\n\nLoss curve: `{curve_ref.uri}`\n\n{loss_table(metrics['log_history'])}")
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run finished: its checkpoints have no further use
    counts = {k: metrics.get(k) for k in ("global_step", "train_loss", "eval_loss", "train_runtime_s", "train_cpu_s",
                                          "resumed_from", "examples", "pairs", "tokens_seen", "sagemaker_job",
                                          "billable_time_s") if k in metrics}
    return StageOutput(artifacts={"adapter": adapter, "curve": curve_ref}, counts=counts)
