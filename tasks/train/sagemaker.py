"""The SageMaker training backend: the entrypoint script as a (managed spot) SageMaker training job.

boto3 only (no sagemaker SDK). The artifact store must be S3: the job's input channels point
straight at the stored artifacts, so nothing is copied twice.

- Channels: ``model`` (base model folder), ``train``, optionally ``eval`` and ``adapter``, and
  ``config`` (``config.json`` = {"train": ..., "run_key": ...}, put in the store first). SageMaker
  downloads each to ``/opt/ml/input/data/<channel>``; the job's environment names them as
  ``SM_CHANNEL_<NAME>`` (with ``SM_MODEL_DIR`` and ``SM_CHECKPOINT_DIR``), which is all
  :mod:`tasks.train.common` reads, so the image needs no sagemaker-training toolkit.
- The container runs ``python -m tasks.train.<method>`` (``ContainerEntrypoint``), the same script
  as the local backend.
- Checkpoints: ``/opt/ml/checkpoints`` syncs to ``<store>/checkpoints/<run_key>``. A spot
  interruption, a retried task or a new job for the same run resumes from the newest complete
  checkpoint there; another run's checkpoints are never restored (see :mod:`tasks.train.common`).
- Jobs are named ``distillery-<method>-<run key[:16]>-<UTC time>``. Before creating one, the backend
  looks for a job of the same run: one still running is followed instead of starting a second, and a
  completed one whose model artifact exists is reused (a crash after the job finished costs nothing).
- The job's ``model.tar.gz`` (the script's output folder: adapter + metrics.json) is extracted into
  ``output``; its ``metrics.json`` is returned with the job name and billable seconds added.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tasks.core.recipe import TrainConfig
from tasks.core.refs import ArtifactRef

METHODS = ("sft", "dpo")
TERMINAL = ("Completed", "Failed", "Stopped")
RUNNING = ("InProgress", "Stopping")
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
MODEL_DIR = "/opt/ml/model"
INPUT_DATA = "/opt/ml/input/data"
# SageMaker's rule for training job names.
_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# Grace period past the job's own time limits before we stop waiting for a final status.
_POLL_GRACE_S = 3600


class SageMakerTrainingError(RuntimeError):
    """The job could not be started, failed, was stopped, or produced no usable artifact."""


def job_name_prefix(method: str, run_key: str) -> str:
    """The part of a job name shared by every attempt of one training run."""
    key = re.sub(r"[^a-zA-Z0-9]", "", run_key)[:16] or "run"
    return f"distillery-{method}-{key}"


def training_job_name(method: str, run_key: str, now: datetime | None = None) -> str:
    """A valid, unique-per-attempt job name: ``distillery-<method>-<key16>-<yyyymmddHHMMSS>``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    name = f"{job_name_prefix(method, run_key)}-{stamp}"[:63].rstrip("-")
    if not _JOB_NAME.match(name):
        raise ValueError(f"invalid SageMaker job name {name!r}")
    return name


def _channel(name: str, ref: ArtifactRef) -> dict[str, Any]:
    # A folder is every object under "<key>/" and lands as /opt/ml/input/data/<name>/<relative path>;
    # a file is its exact key and lands as /opt/ml/input/data/<name>/<file name>.
    uri = ref.uri.rstrip("/") + ("/" if ref.is_dir else "")
    return {
        "ChannelName": name,
        "InputMode": "File",
        "CompressionType": "None",
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }


def build_training_job_request(
    name: str,
    method: str,
    train: TrainConfig,
    run_key: str,
    store_root: str,
    channels: dict[str, ArtifactRef],
) -> dict[str, Any]:
    """The ``create_training_job`` arguments (pure: no AWS call)."""
    sm = train.sagemaker
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": sm.max_runtime_s}
    if sm.spot:
        stopping["MaxWaitTimeInSeconds"] = sm.max_wait_s
    environment = {
        "SM_MODEL_DIR": MODEL_DIR,
        "SM_CHECKPOINT_DIR": CHECKPOINT_LOCAL_PATH,
        "SM_INPUT_DIR": "/opt/ml/input",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    environment.update({f"SM_CHANNEL_{channel.upper()}": f"{INPUT_DATA}/{channel}" for channel in channels})
    root = store_root.rstrip("/")
    return {
        "TrainingJobName": name,
        "RoleArn": sm.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": sm.image_uri,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python", "-m", f"tasks.train.{method}"],
        },
        "InputDataConfig": [_channel(channel, ref) for channel, ref in channels.items()],
        "OutputDataConfig": {"S3OutputPath": f"{root}/training-jobs/"},
        "ResourceConfig": {
            "InstanceType": sm.instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": sm.volume_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": sm.spot,
        "CheckpointConfig": {"S3Uri": f"{root}/checkpoints/{run_key}", "LocalPath": CHECKPOINT_LOCAL_PATH},
        "Environment": environment,
        "Tags": [
            {"Key": "distillery:run-key", "Value": run_key},
            {"Key": "distillery:method", "Value": method},
        ],
    }


def check_config(method: str, train: TrainConfig) -> None:
    """Refuse, before any AWS call, what SageMaker would refuse or what could only fail later."""
    sm = train.sagemaker
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; expected one of {METHODS}")
    missing = [f"train.sagemaker.{field}" for field in ("image_uri", "role_arn") if not getattr(sm, field)]
    if missing:
        raise ValueError(
            f"train.backend=sagemaker needs {' and '.join(missing)} "
            "(the training image from infra/sagemaker and the stack's SageMakerExecutionRoleArn)"
        )
    if sm.spot and sm.max_wait_s < sm.max_runtime_s:
        raise ValueError(
            f"train.sagemaker.max_wait_s ({sm.max_wait_s}) must be >= max_runtime_s "
            f"({sm.max_runtime_s}) for managed spot training"
        )
    family = sm.instance_type.removeprefix("ml.").split(".", 1)[0]
    if train.quantization == "4bit" and not family.startswith(("g", "p")):
        raise ValueError(
            f"train.quantization=4bit (QLoRA) needs a CUDA instance; {sm.instance_type} has no GPU"
        )


def describe_status(job: dict[str, Any]) -> str:
    """One line about a job's state: status, secondary status and its latest message."""
    line = f"{job.get('TrainingJobStatus')} / {job.get('SecondaryStatus')}"
    transitions = job.get("SecondaryStatusTransitions") or []
    message = transitions[-1].get("StatusMessage") if transitions else None
    return f"{line}: {message}" if message else line


def wait_for_training_job(
    client: Any,
    name: str,
    poll_s: float,
    log: Callable[[str], None] = print,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll ``describe_training_job`` until the job ends; log each status change; return the last describe.

    Raises:
        SageMakerTrainingError: the job Failed (with its FailureReason) or was Stopped, or it did not
            reach a final status within ``timeout_s``.
    """
    deadline = None if timeout_s is None else clock() + timeout_s
    last = None
    while True:
        job = client.describe_training_job(TrainingJobName=name)
        state = (job.get("TrainingJobStatus"), job.get("SecondaryStatus"))
        if state != last:
            log(f"SageMaker job {name}: {describe_status(job)}")
            last = state
        status = job.get("TrainingJobStatus")
        if status == "Completed":
            return job
        if status in ("Failed", "Stopped"):
            reason = job.get("FailureReason") or "no failure reason given"
            raise SageMakerTrainingError(
                f"SageMaker training job {name} {status.lower()} ({job.get('SecondaryStatus')}): {reason}. "
                f"Logs: CloudWatch /aws/sagemaker/TrainingJobs, stream {name}/algo-1-*"
            )
        if deadline is not None and clock() >= deadline:
            raise SageMakerTrainingError(
                f"SageMaker training job {name} still {status} after {timeout_s:.0f} s; it was left running"
            )
        sleep(poll_s)


def extract_model_artifacts(archive: Path, output: Path) -> None:
    """Unpack the job's ``model.tar.gz`` into ``output``, refusing links and paths outside it."""
    output.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(output, filter="data")


def _s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        raise SageMakerTrainingError(f"not an S3 URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def delete_checkpoints(s3: Any, uri: str) -> int:
    """Delete every object under the S3 prefix ``uri`` (a finished run's checkpoints); return how many.

    Once the job's model artifact is in hand the checkpoints only cost storage: a retry of the same
    run finds the completed job and downloads its artifact again instead of resuming.
    """
    bucket, prefix = _s3_location(uri.rstrip("/") + "/")
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:  # a page holds at most 1,000 keys, as many as one delete_objects call takes
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def _sagemaker_client(train: TrainConfig) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    region = (
        train.sagemaker.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or session.region_name
    )
    if not region:
        raise ValueError("no AWS region: set train.sagemaker.region or AWS_REGION")
    return session.client(
        "sagemaker",
        region_name=region,
        endpoint_url=train.sagemaker.endpoint_url,
        config=Config(retries={"max_attempts": 10, "mode": "standard"}),
    )


def _previous_job(client: Any, prefix: str) -> dict[str, Any] | None:
    """The newest job of this run (same name prefix), or None."""
    found = client.list_training_jobs(
        NameContains=prefix, SortBy="CreationTime", SortOrder="Descending", MaxResults=10
    ).get("TrainingJobSummaries", [])
    found = [job for job in found if job["TrainingJobName"].startswith(prefix + "-")]
    return found[0] if found else None


def _artifact_exists(s3: Any, uri: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = _s3_location(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def run_sagemaker_training(
    method: str,
    train: TrainConfig,
    run_key: str,
    base_model: ArtifactRef,
    data: ArtifactRef,
    eval_data: ArtifactRef | None,
    init_adapter: ArtifactRef | None,
    output: Path,
    log: Callable[[str], None] = print,
    *,
    store: Any = None,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Train on SageMaker and return the script's metrics.json; the adapter is extracted into ``output``.

    Args:
        method: ``sft`` or ``dpo``.
        train: The recipe's train section (``train.sagemaker`` says where and how).
        run_key: Identifies the run; names the checkpoint prefix, so a retry resumes.
        base_model, data, eval_data, init_adapter: Artifacts in the (S3) store, passed as channels.
        output: Local folder that receives the adapter and metrics.json.
        log: Where status changes go (the task's logger).
        store, client, sleep: The artifact store, SageMaker client and sleep to use (default: the
            configured store, a boto3 client for ``train.sagemaker``, ``time.sleep``).

    Raises:
        ValueError: the store is not S3, or the recipe lacks what a job needs.
        SageMakerTrainingError: the job failed, was stopped or left no usable artifact.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.core.store import get_store

    check_config(method, train)
    store = store if store is not None else get_store()
    s3 = getattr(store, "client", None)
    if not str(getattr(store, "root", "")).startswith("s3://") or s3 is None:
        raise ValueError(
            f"train.backend=sagemaker needs an S3 artifact store (DISTILLERY_STORE_URI=s3://bucket/prefix);"
            f" the store is {getattr(store, 'root', store)!r}"
        )
    for ref in (base_model, data, eval_data, init_adapter):
        if ref is not None and not ref.uri.startswith("s3://"):
            raise ValueError(f"artifact {ref.uri} is not in S3; SageMaker can only read S3 channels")
    client = client if client is not None else _sagemaker_client(train)
    sm = train.sagemaker

    prefix = job_name_prefix(method, run_key)
    previous = _previous_job(client, prefix)
    name, job = None, None
    if previous is not None and previous["TrainingJobStatus"] in RUNNING:
        name = previous["TrainingJobName"]
        log(f"SageMaker job {name} of this run is still {previous['TrainingJobStatus']}: following it")
    elif previous is not None and previous["TrainingJobStatus"] == "Completed":
        done = client.describe_training_job(TrainingJobName=previous["TrainingJobName"])
        artifact = done.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        if artifact and _artifact_exists(s3, artifact):
            name, job = done["TrainingJobName"], done
            log(f"SageMaker job {name} of this run already completed: reusing its model artifact")
    if previous is not None and name is None:
        log(
            f"SageMaker job {previous['TrainingJobName']} of this run ended {previous['TrainingJobStatus']} "
            "without a usable model artifact: starting another, which resumes from the run's checkpoints"
        )
    if name is None:
        config_ref = store.put_json(
            {"train": train.model_dump(mode="json"), "run_key": run_key},
            name="config.json",
            kind="train-config",
        )
        channels = {"model": base_model, "train": data, "config": config_ref}
        if eval_data is not None:
            channels["eval"] = eval_data
        if init_adapter is not None:
            channels["adapter"] = init_adapter
        name = training_job_name(method, run_key)
        request = build_training_job_request(name, method, train, run_key, store.root, channels)
        client.create_training_job(**request)
        log(
            f"SageMaker job {name} created: {sm.instance_type}{' (spot)' if sm.spot else ''}, checkpoints "
            f"{request['CheckpointConfig']['S3Uri']}"
        )
    if job is None:
        limit = (sm.max_wait_s if sm.spot else sm.max_runtime_s) + _POLL_GRACE_S
        job = wait_for_training_job(client, name, sm.poll_s, log=log, timeout_s=limit, sleep=sleep)

    artifact = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not artifact:
        raise SageMakerTrainingError(f"SageMaker job {name} completed without ModelArtifacts")
    bucket, key = _s3_location(artifact)
    output.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=output.parent, prefix=".sagemaker-"))
    try:
        archive = scratch / "model.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except (ClientError, BotoCoreError) as error:
            raise SageMakerTrainingError(
                f"SageMaker job {name}: cannot download {artifact}: {error}"
            ) from error
        extract_model_artifacts(archive, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metrics_path = output / "metrics.json"
    if not metrics_path.is_file():
        raise SageMakerTrainingError(
            f"SageMaker job {name}: {artifact} has no metrics.json (did the script finish?)"
        )
    metrics = json.loads(metrics_path.read_text())
    checkpoints = f"{store.root}/checkpoints/{run_key}"
    try:
        removed = delete_checkpoints(s3, checkpoints)
        log(f"SageMaker job {name}: deleted {removed} checkpoint objects under {checkpoints}")
    except (ClientError, BotoCoreError) as error:  # storage left behind is no reason to fail a trained run
        log(f"SageMaker job {name}: could not delete the checkpoints under {checkpoints}: {error}")
    log(
        f"SageMaker job {name}: adapter in {output}; billable {job.get('BillableTimeInSeconds', '?')} s "
        f"of {job.get('TrainingTimeInSeconds', '?')} s"
    )
    return {**metrics, "sagemaker_job": name, "billable_time_s": job.get("BillableTimeInSeconds")}
