"""The SageMaker backend's pure parts: job names, the request, config checks, status handling, archives.

moto completes every training job at once, so the Failed / Stopped / still-running paths are tested
here against a scripted fake client; tests/integration/test_train_sagemaker.py runs a whole job
against moto's real server.
"""

from __future__ import annotations

import io
import re
import tarfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tasks.core.recipe import TrainConfig
from tasks.core.refs import ArtifactRef
from tasks.train import sagemaker
from tasks.train.sagemaker import SageMakerTrainingError

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra" / "sagemaker"
VALID_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROOT = "s3://bucket/team/distillery"


def _train(**sagemaker_fields) -> TrainConfig:
    fields = {
        "image_uri": "123.dkr.ecr.us-east-1.amazonaws.com/distillery-train:1",
        "role_arn": "arn:aws:iam::123:role/sm",
        **sagemaker_fields,
    }
    return TrainConfig.model_validate({"backend": "sagemaker", "sagemaker": fields})


def _ref(key: str, is_dir: bool) -> ArtifactRef:
    return ArtifactRef(uri=f"{ROOT}/objects/ab/abc/{key}", sha256="abc", bytes=1, kind="x", is_dir=is_dir)


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("run_key", ["f" * 64, "a/b c_d:e" * 10, "", "-" * 5])
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_job_names_are_valid_and_share_the_run_prefix(method, run_key):
    when = datetime(2026, 11, 22, 3, 4, 5, tzinfo=UTC)
    name = sagemaker.training_job_name(method, run_key, now=when)

    assert VALID_NAME.match(name) and len(name) <= 63
    assert name.startswith(sagemaker.job_name_prefix(method, run_key) + "-")
    assert name.endswith("20261122030405")


def test_two_runs_get_different_prefixes():
    assert sagemaker.job_name_prefix("sft", "a" * 64) != sagemaker.job_name_prefix("sft", "b" * 64)
    assert sagemaker.job_name_prefix("sft", "a" * 64) != sagemaker.job_name_prefix("dpo", "a" * 64)


# -- the request -------------------------------------------------------------------------------


def test_request_has_entrypoint_spot_limits_checkpoints_and_channels():
    train = _train(instance_type="ml.g5.2xlarge", volume_gb=80, max_runtime_s=7200, max_wait_s=10800)
    channels = {
        "model": _ref("base-model", True),
        "train": _ref("train.jsonl", False),
        "config": _ref("config.json", False),
        "adapter": _ref("sft-adapter", True),
    }

    request = sagemaker.build_training_job_request("job-1", "dpo", train, "k" * 64, ROOT + "/", channels)

    assert request["AlgorithmSpecification"]["ContainerEntrypoint"] == ["python", "-m", "tasks.train.dpo"]
    assert request["AlgorithmSpecification"]["TrainingImage"] == train.sagemaker.image_uri
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 10800}
    assert request["CheckpointConfig"] == {
        "S3Uri": f"{ROOT}/checkpoints/{'k' * 64}",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["OutputDataConfig"]["S3OutputPath"] == f"{ROOT}/training-jobs/"
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.2xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 80,
    }
    uris = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert uris["model"] == f"{ROOT}/objects/ab/abc/base-model/"  # a folder: everything under it
    assert uris["train"] == f"{ROOT}/objects/ab/abc/train.jsonl"  # a file: exactly that object
    env = request["Environment"]
    assert env["SM_CHANNEL_ADAPTER"] == "/opt/ml/input/data/adapter" and "SM_CHANNEL_EVAL" not in env
    assert env["SM_MODEL_DIR"] == "/opt/ml/model" and env["SM_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"


def test_on_demand_request_has_no_max_wait():
    request = sagemaker.build_training_job_request("job-1", "sft", _train(spot=False), "k", ROOT, {})
    assert request["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]


@pytest.mark.parametrize(
    ("train", "method", "message"),
    [
        (
            TrainConfig.model_validate({"backend": "sagemaker"}),
            "sft",
            "train.sagemaker.image_uri and train.sagemaker.role_arn",
        ),
        (_train(max_runtime_s=7200, max_wait_s=3600), "sft", "max_wait_s (3600) must be >= max_runtime_s"),
        (
            _train(instance_type="ml.m5.xlarge").model_copy(update={"quantization": "4bit"}),
            "sft",
            "has no GPU",
        ),
        (_train(), "ppo", "unknown training method"),
    ],
)
def test_config_errors_name_the_field(train, method, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sagemaker.check_config(method, train)


def test_a_local_store_is_refused_before_any_aws_call(tmp_path):
    from tasks.core.store import LocalStore

    store = LocalStore(tmp_path / "store")
    ref = store.put_bytes(b"{}", name="train.jsonl", kind="dataset")

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"unexpected SageMaker call {name}")

    with pytest.raises(ValueError, match="needs an S3 artifact store"):
        sagemaker.run_sagemaker_training(
            "sft", _train(), "k", ref, ref, None, None, tmp_path / "out", store=store, client=NoCalls()
        )


# -- status handling ---------------------------------------------------------------------------


class ScriptedClient:
    """describe_training_job answers from a script of (status, secondary status[, extra fields])."""

    def __init__(self, script: list[tuple]):
        self.script = list(script)
        self.calls = 0

    def describe_training_job(self, TrainingJobName):
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        job = {
            "TrainingJobName": TrainingJobName,
            "TrainingJobStatus": step[0],
            "SecondaryStatus": step[1],
            "SecondaryStatusTransitions": [{"Status": step[1], "StatusMessage": f"now {step[1]}"}],
        }
        return {**job, **(step[2] if len(step) > 2 else {})}


def _wait(client, **kwargs):
    logs: list[str] = []
    sleeps: list[float] = []
    try:
        result = sagemaker.wait_for_training_job(
            client, "job-1", poll_s=7, log=logs.append, sleep=sleeps.append, **kwargs
        )
    except SageMakerTrainingError as error:
        return error, logs, sleeps
    return result, logs, sleeps


def test_failed_job_raises_with_its_failure_reason_and_logs_each_change_once():
    client = ScriptedClient(
        [
            ("InProgress", "Starting"),
            ("InProgress", "Starting"),
            ("InProgress", "Downloading"),
            ("InProgress", "Training"),
            ("InProgress", "Training"),
            ("Failed", "Failed", {"FailureReason": "AlgorithmError: CUDA out of memory"}),
        ]
    )

    error, logs, sleeps = _wait(client)

    assert isinstance(error, SageMakerTrainingError)
    assert "failed" in str(error) and "AlgorithmError: CUDA out of memory" in str(error)
    assert "/aws/sagemaker/TrainingJobs" in str(error)
    assert [line.split(": ", 1)[1] for line in logs] == [
        "InProgress / Starting: now Starting",
        "InProgress / Downloading: now Downloading",
        "InProgress / Training: now Training",
        "Failed / Failed: now Failed",
    ]
    assert sleeps == [7] * 5 and client.calls == 6


def test_stopped_job_raises_even_without_a_failure_reason():
    error, _, _ = _wait(ScriptedClient([("InProgress", "Training"), ("Stopped", "MaxWaitTimeExceeded")]))
    assert isinstance(error, SageMakerTrainingError)
    assert "stopped (MaxWaitTimeExceeded)" in str(error) and "no failure reason given" in str(error)


def test_spot_interruption_is_logged_and_the_wait_goes_on():
    client = ScriptedClient(
        [
            ("InProgress", "Training"),
            ("InProgress", "Interrupted"),
            ("InProgress", "Starting"),
            ("InProgress", "Training"),
            ("Completed", "Completed", {"BillableTimeInSeconds": 60}),
        ]
    )
    job, logs, _ = _wait(client)
    assert job["TrainingJobStatus"] == "Completed" and job["BillableTimeInSeconds"] == 60
    assert any("Interrupted" in line for line in logs) and len(logs) == 5


def test_a_job_that_never_ends_times_out_and_says_it_was_left_running():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    error = None
    try:
        sagemaker.wait_for_training_job(
            ScriptedClient([("InProgress", "Training")]),
            "job-1",
            poll_s=60,
            log=lambda m: None,
            timeout_s=600,
            sleep=sleep,
            clock=lambda: now[0],
        )
    except SageMakerTrainingError as caught:
        error = caught
    assert error is not None and "left running" in str(error) and now[0] == 600


# -- the model archive ---------------------------------------------------------------------------


def _archive(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_extracts_into_output(tmp_path):
    archive = _archive(tmp_path, {"adapter_model.safetensors": b"w", "metrics.json": b"{}"})
    sagemaker.extract_model_artifacts(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adapter_model.safetensors",
        "metrics.json",
    ]


def test_archive_paths_outside_output_are_refused(tmp_path):
    archive = _archive(tmp_path, {"../escaped.txt": b"x"})
    with pytest.raises(tarfile.TarError):
        sagemaker.extract_model_artifacts(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


# -- the training image ------------------------------------------------------------------------


def _pins(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines if line}


def test_the_install_is_locked_and_the_tests_run_with_the_lock():
    from importlib.metadata import PackageNotFoundError, version

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    declared += [Requirement(r) for extra in pyproject["project"]["optional-dependencies"].values() for r in extra]
    lock = _pins(REPO / "constraints.txt")
    for requirement in declared:
        assert canonicalize_name(requirement.name) in lock, f"{requirement.name} is not in constraints.txt: run make lock"
    for name, pin in lock.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} is not pinned"
        try:
            installed = version(name).split("+")[0]
        except PackageNotFoundError:
            installed = None
        assert installed == spec.version, f"constraints.txt says {pin}, the tests run with {installed}"


@pytest.mark.parametrize("pinned", ["infra/sagemaker/requirements.txt", "bench/gpu_wheels.txt"])
def test_the_training_image_and_the_gpu_kit_pin_the_locked_versions(pinned):
    lock = _pins(REPO / "constraints.txt")
    pins = _pins(REPO / pinned)
    assert {"transformers", "peft", "trl", "datasets", "bitsandbytes"} <= set(pins)
    for name, pin in pins.items():
        assert name in lock and pin.specifier == lock[name].specifier, (
            f"{pinned} pins {pin}, constraints.txt {lock.get(name)}"
        )


def test_dockerfile_installs_the_requirements_and_ships_the_tasks_package():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "COPY infra/sagemaker/requirements.txt" in dockerfile and "pip install -r" in dockerfile
    assert re.search(r"^COPY tasks/ ", dockerfile, re.MULTILINE)
    assert "import tasks.train.sft, tasks.train.dpo" in dockerfile
    assert "tasks.train." in (INFRA / "train").read_text()
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:3] == ["*", "!tasks/", "!infra/sagemaker/"]


# -- one job per run -----------------------------------------------------------------------------


class FakeS3:
    def __init__(self, archive: Path):
        self.archive = archive
        # The run's synced checkpoints, and another run's that must survive the clean-up.
        self.objects = {f"{key}/checkpoints/{run}/checkpoint-{step}/adapter_model.safetensors"
                        for key in [ROOT.split("/", 3)[3]] for run in ("k" * 64, "o" * 64) for step in (1, 2)}

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        objects = self.objects

        class Pages:
            def paginate(self, Bucket, Prefix):
                yield {"Contents": [{"Key": key} for key in sorted(objects) if key.startswith(Prefix)]}

        return Pages()

    def delete_objects(self, Bucket, Delete):
        self.objects -= {item["Key"] for item in Delete["Objects"]}

    def head_object(self, Bucket, Key):
        return {"ContentLength": self.archive.stat().st_size}

    def download_file(self, bucket, key, target):
        Path(target).write_bytes(self.archive.read_bytes())


class FakeStore:
    root = ROOT

    def __init__(self, archive: Path):
        self.client = FakeS3(archive)

    def put_json(self, value, name, kind):
        return _ref(name, False)


class FakeSageMaker(ScriptedClient):
    """Earlier jobs of the run (list_training_jobs), then a scripted describe for the job followed."""

    def __init__(self, earlier: list[tuple[str, str]], script: list[tuple]):
        super().__init__(script)
        self.earlier = earlier
        self.created: list[dict] = []

    def list_training_jobs(self, NameContains, **kwargs):
        jobs = [
            {"TrainingJobName": f"{NameContains}-{stamp}", "TrainingJobStatus": status}
            for stamp, status in self.earlier
        ]
        return {"TrainingJobSummaries": jobs}

    def create_training_job(self, **request):
        self.created.append(request)
        return {"TrainingJobArn": "arn"}

    def describe_training_job(self, TrainingJobName):
        job = super().describe_training_job(TrainingJobName)
        return {
            **job,
            "ModelArtifacts": {"S3ModelArtifacts": f"{ROOT}/training-jobs/{TrainingJobName}/model.tar.gz"},
        }


def _run(tmp_path: Path, client: FakeSageMaker) -> tuple[dict, list[str]]:
    archive = _archive(tmp_path, {"adapter_model.safetensors": b"w", "metrics.json": b'{"global_step": 3}'})
    logs: list[str] = []
    store = FakeStore(archive)
    metrics = sagemaker.run_sagemaker_training(
        "sft",
        _train(poll_s=1),
        "k" * 64,
        _ref("base-model", True),
        _ref("train.jsonl", False),
        None,
        None,
        tmp_path / "out",
        log=logs.append,
        store=store,
        client=client,
        sleep=lambda s: None,
    )
    # The run's checkpoints are gone once its adapter is in hand; another run's are untouched.
    assert store.client.objects and all("/checkpoints/" + "o" * 64 in key for key in store.client.objects)
    assert any("deleted 2 checkpoint objects" in line for line in logs)
    return metrics, logs


def test_a_job_of_this_run_still_running_is_followed_not_duplicated(tmp_path):
    client = FakeSageMaker(
        [("20261122010101", "InProgress")], [("InProgress", "Training"), ("Completed", "Completed")]
    )

    metrics, logs = _run(tmp_path, client)

    assert client.created == []
    assert metrics["global_step"] == 3 and metrics["sagemaker_job"].endswith("-20261122010101")
    assert "following it" in logs[0]
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == b"w"


def test_after_a_failed_job_of_this_run_a_new_one_starts(tmp_path):
    client = FakeSageMaker([("20261122010101", "Failed")], [("Completed", "Completed")])

    metrics, logs = _run(tmp_path, client)

    (request,) = client.created
    assert request["TrainingJobName"] != f"{sagemaker.job_name_prefix('sft', 'k' * 64)}-20261122010101"
    assert metrics["sagemaker_job"] == request["TrainingJobName"]
    assert "ended Failed" in logs[0] and "created" in logs[1]
