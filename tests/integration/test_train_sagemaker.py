"""The SageMaker backend against moto's real server (S3 + SageMaker APIs over HTTP).

moto accepts ``create_training_job`` and reports the job Completed without running anything. So the
SageMaker client is wrapped by :class:`LocalContainer`, which does what SageMaker would do at that
moment, from the job as moto describes it: download every input channel from S3 into a stand-in
for ``/opt/ml/input/data``, restore the checkpoints from ``CheckpointConfig.S3Uri``, run the job's
``ContainerEntrypoint`` with the job's environment (paths moved under a temporary folder), sync the
checkpoints back, and upload ``SM_MODEL_DIR`` as ``model.tar.gz`` where ``ModelArtifacts`` says.
Then ``run_sagemaker_training`` polls, downloads and unpacks it like it would on AWS.

The model is a 2-layer, 64-wide random Llama with SmolLM2's tokenizer and config: the real 538 MB
SmolLM2 would spend about a minute just crossing moto's S3 on this machine, and the plumbing under
test does not depend on the weights. The entrypoint itself is tested with the real model in
test_train_entrypoints.py and test_train_resume.py. Failed and stopped jobs (which moto cannot
produce) are tested in tests/unit/test_train_sagemaker_plumbing.py with a scripted client.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tarfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tasks.core.recipe import TrainConfig
from tasks.core.settings import get_settings
from tasks.core.store import get_store
from tasks.train import sagemaker
from tasks.train.common import COMPLETE_MARKER
from tasks.train.sagemaker import SageMakerTrainingError, run_sagemaker_training
from tests.fakes.s3 import moto_s3_endpoint, new_bucket

pytestmark = pytest.mark.integration

PREFIX = "team/distillery"
RUN_KEY = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3_endpoint() as url:  # one moto server answers S3 and SageMaker alike
        yield url


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for the in-process container runs (see test_train_resume.py for why)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def store(endpoint, monkeypatch):
    bucket = new_bucket(endpoint)
    monkeypatch.setenv("DISTILLERY_STORE_URI", f"s3://{bucket}/{PREFIX}")
    monkeypatch.setenv("DISTILLERY_S3_ENDPOINT_URL", endpoint)
    get_settings.cache_clear()
    return get_store()


@pytest.fixture(scope="module")
def tiny_model_dir(base_model_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base_model_dir)
    config.update(
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "base-model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(folder)
    return folder


def _rows(n: int) -> str:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} + {i}?"},
                    {"role": "assistant", "content": f"{i} + {i} = {2 * i}."},
                ]
            }
        )
        + "\n"
        for i in range(n)
    )


def _train(endpoint: str) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "backend": "sagemaker",
            "lora": {"r": 4, "alpha": 8},
            "save_steps": 1,
            "seed": 1,
            "sft": {"max_steps": 2, "batch_size": 2, "max_seq_len": 48},
            "sagemaker": {
                "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/distillery-train:test",
                "role_arn": "arn:aws:iam::123456789012:role/distillery-sagemaker",
                "instance_type": "ml.g5.xlarge",
                "spot": True,
                "max_runtime_s": 3600,
                "max_wait_s": 7200,
                "poll_s": 0.01,
                "region": "us-east-1",
                "endpoint_url": endpoint,
            },
        }
    )


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


@contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class LocalContainer:
    """moto's SageMaker client, plus running each created job's container here (see the module doc)."""

    def __init__(self, client, s3, root: Path, run: bool = True):
        self.client, self.s3, self.root, self.run = client, s3, root, run
        self.created: list[dict] = []
        self.uploaded: list[str] = []  # checkpoint keys the container synced to S3

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_training_job(self, **request):
        response = self.client.create_training_job(**request)
        self.created.append(request)
        if self.run:
            job = self.client.describe_training_job(TrainingJobName=request["TrainingJobName"])
            # moto does not keep the job's Environment; everything else comes from its description.
            self._run_container(job, request["Environment"])
        return response

    def _download_prefix(self, uri: str, target: Path) -> None:
        bucket, prefix = _split(uri)
        # SageMaker keeps key paths relative to the prefix's last "/": a folder prefix keeps its tree,
        # an exact file key lands as its file name.
        base = prefix[: prefix.rfind("/") + 1]
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                local = target / obj["Key"][len(base) :]
                local.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, obj["Key"], str(local))

    def _run_container(self, job: dict, environment: dict[str, str]) -> None:
        opt_ml = self.root / job["TrainingJobName"]  # stands in for /opt/ml
        for channel in job["InputDataConfig"]:
            self._download_prefix(
                channel["DataSource"]["S3DataSource"]["S3Uri"],
                opt_ml / "input" / "data" / channel["ChannelName"],
            )
        checkpoint_uri = job["CheckpointConfig"]["S3Uri"].rstrip("/") + "/"
        local_checkpoints = opt_ml / job["CheckpointConfig"]["LocalPath"].removeprefix("/opt/ml/")
        self._download_prefix(checkpoint_uri, local_checkpoints)
        env = {key: value.replace("/opt/ml", str(opt_ml)) for key, value in environment.items()}
        entrypoint = job["AlgorithmSpecification"]["ContainerEntrypoint"]
        assert entrypoint[:2] == ["python", "-m"], entrypoint
        saved_argv = sys.argv
        sys.argv = [entrypoint[2]]  # `python -m module` with no arguments, as in the container
        try:
            with _environment(env), pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
                # runpy notes that the module was imported before (by this test session): harmless here.
                warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
                runpy.run_module(entrypoint[2], run_name="__main__", alter_sys=True)
        finally:
            sys.argv = saved_argv
        assert exit_info.value.code == 0
        bucket, key = _split(checkpoint_uri)
        for path in sorted(local_checkpoints.rglob("*")):
            if path.is_file():
                self.s3.upload_file(str(path), bucket, key + path.relative_to(local_checkpoints).as_posix())
                self.uploaded.append(key + path.relative_to(local_checkpoints).as_posix())
        archive = opt_ml / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(Path(env["SM_MODEL_DIR"]).iterdir()):
                tar.add(path, arcname=path.name)
        bucket, key = _split(job["ModelArtifacts"]["S3ModelArtifacts"])
        self.s3.upload_file(str(archive), bucket, key)


def _sagemaker_client(endpoint: str):
    import boto3

    return boto3.session.Session().client("sagemaker", region_name="us-east-1", endpoint_url=endpoint)


@pytest.fixture
def inputs(store, tiny_model_dir, tmp_path):
    (tmp_path / "train.jsonl").write_text(_rows(8))
    (tmp_path / "heldout.jsonl").write_text(_rows(2))
    return {
        "model": store.put_dir(tiny_model_dir, kind="model", name="base-model"),
        "train": store.put_file(tmp_path / "train.jsonl", kind="dataset", rows=8),
        "eval": store.put_file(tmp_path / "heldout.jsonl", kind="dataset", rows=2),
    }


def test_sagemaker_job_trains_and_the_adapter_lands_in_output(endpoint, store, inputs, tmp_path):
    train = _train(endpoint)
    container = LocalContainer(_sagemaker_client(endpoint), store.client, tmp_path / "opt-ml")
    logs: list[str] = []
    output = tmp_path / "work" / "sft-output"

    metrics = run_sagemaker_training(
        "sft",
        train,
        RUN_KEY,
        inputs["model"],
        inputs["train"],
        inputs["eval"],
        None,
        output,
        log=logs.append,
        client=container,
    )

    # The adapter the container wrote came back through model.tar.gz.
    (request,) = container.created
    name = request["TrainingJobName"]
    produced = tmp_path / "opt-ml" / name / "model"
    assert (output / "adapter_model.safetensors").read_bytes() == (
        produced / "adapter_model.safetensors"
    ).read_bytes()
    assert metrics["global_step"] == 2 and metrics["eval_loss"] > 0 and metrics["run_key"] == RUN_KEY
    assert metrics["sagemaker_job"] == name and sagemaker._JOB_NAME.match(name)
    assert [e["step"] for e in metrics["log_history"] if "loss" in e] == [1, 2]

    # The job as SageMaker (moto) recorded it.
    job = container.client.describe_training_job(TrainingJobName=name)
    assert job["AlgorithmSpecification"]["ContainerEntrypoint"] == ["python", "-m", "tasks.train.sft"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == train.sagemaker.image_uri
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"]["S3Uri"] == f"{store.root}/checkpoints/{RUN_KEY}"
    assert {c["ChannelName"] for c in job["InputDataConfig"]} == {"model", "train", "eval", "config"}
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"

    # The checkpoints synced under this run's key, marked complete; once the adapter was in hand they
    # were deleted (they only cost storage now).
    synced = [key for key in container.uploaded if key.startswith(_split(f"{store.root}/checkpoints/{RUN_KEY}/")[1])]
    assert any(key.endswith(f"checkpoint-2/{COMPLETE_MARKER}") for key in synced)
    bucket, prefix = _split(f"{store.root}/checkpoints/{RUN_KEY}/")
    assert store.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) == 0
    assert any(f"deleted {len(synced)} checkpoint objects" in line for line in logs)
    assert any("created" in line for line in logs) and any("Completed" in line for line in logs)


def test_a_second_call_for_the_same_run_reuses_the_completed_job(endpoint, store, inputs, tmp_path):
    train = _train(endpoint)
    container = LocalContainer(_sagemaker_client(endpoint), store.client, tmp_path / "opt-ml")
    first = run_sagemaker_training(
        "sft",
        train,
        RUN_KEY[::-1],
        inputs["model"],
        inputs["train"],
        None,
        None,
        tmp_path / "first",
        log=lambda m: None,
        client=container,
    )
    logs: list[str] = []

    again = run_sagemaker_training(
        "sft",
        train,
        RUN_KEY[::-1],
        inputs["model"],
        inputs["train"],
        None,
        None,
        tmp_path / "again",
        log=logs.append,
        client=container,
    )

    assert len(container.created) == 1  # nothing paid twice
    assert again["sagemaker_job"] == first["sagemaker_job"]
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "first" / "adapter_model.safetensors"
    ).read_bytes()
    assert any("already completed" in line for line in logs)


def test_a_job_that_left_no_model_artifact_is_an_error(endpoint, store, inputs, tmp_path):
    container = LocalContainer(_sagemaker_client(endpoint), store.client, tmp_path / "opt-ml", run=False)

    with pytest.raises(SageMakerTrainingError, match="cannot download"):
        run_sagemaker_training(
            "dpo",
            _train(endpoint),
            "f" * 64,
            inputs["model"],
            inputs["train"],
            None,
            None,
            tmp_path / "out",
            log=lambda m: None,
            client=container,
        )
    assert container.created[0]["AlgorithmSpecification"]["ContainerEntrypoint"][-1] == "tasks.train.dpo"


def test_client_built_from_the_recipe_reaches_the_endpoint(endpoint, store, inputs, tmp_path):
    """No injected client: the backend builds its own from train.sagemaker (region, endpoint_url)."""
    with pytest.raises(SageMakerTrainingError, match="cannot download"):
        run_sagemaker_training(
            "sft",
            _train(endpoint),
            "e" * 64,
            inputs["model"],
            inputs["train"],
            None,
            None,
            tmp_path / "out",
            log=lambda m: None,
        )
    jobs = _sagemaker_client(endpoint).list_training_jobs(
        NameContains=sagemaker.job_name_prefix("sft", "e" * 64)
    )
    assert len(jobs["TrainingJobSummaries"]) == 1
