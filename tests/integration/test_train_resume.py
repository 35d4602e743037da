"""Crash-safe resume and reproducibility of the SFT entrypoint, with the real SmolLM2-135M on CPU.

A run is SIGKILLed right after its step-2 checkpoint is marked complete, then started again with the
same run key: it must pick up at step 2 and end exactly where an uninterrupted run ends. A truncated
newest checkpoint falls back to the one before; another run's checkpoints are never restored.
Runs are tiny (8 short rows, batch 2, 4 steps, LoRA r=4) and use one CPU thread: on a shared 2-core
machine a second OpenMP thread mostly spins (measured 2-5x slower per step under load).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.recipe import TrainConfig
from tasks.train import common, sft
from tasks.train.common import COMPLETE_MARKER

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_KEY = "resume-test-run"
QA = [
    ("What does a p-value measure?", "How surprising the data are if the null hypothesis is true."),
    ("What is a confidence interval?", "A range that covers the true value in 95% of repeated samples."),
    ("Why standardize features?", "So that penalties and distances treat every feature on one scale."),
    ("What is overfitting?", "Fitting noise in the training data, which hurts held-out accuracy."),
    ("What is a prior?", "What you believe about a parameter before seeing the data."),
    ("When is the median better than the mean?", "When the data are skewed or have outliers."),
    ("What is bootstrapping?", "Resampling the data with replacement to estimate variability."),
    ("What does R squared say?", "The share of the outcome's variance the model explains."),
]


def _rows() -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in QA
    ]


def _train(**sft_overrides) -> dict:
    sft_fields = {
        "max_steps": 4,
        "batch_size": 2,
        "max_seq_len": 64,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        **sft_overrides,
    }
    return TrainConfig.model_validate(
        {"lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "sft": sft_fields, "save_steps": 2, "seed": 7}
    ).model_dump(mode="json")


@pytest.fixture(scope="module")
def one_thread():
    """CPU only (the exactness claims are about CPU), one thread, and torch's settings restored afterwards."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, one_thread) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    return folder


def _argv(
    workdir: Path,
    base: Path,
    name: str,
    run_key: str = RUN_KEY,
    checkpoints: Path | None = None,
    **sft_overrides,
) -> list[str]:
    config = workdir / f"{name}-config.json"
    config.write_text(json.dumps({"train": _train(**sft_overrides), "run_key": run_key}))
    return [
        "--config",
        str(config),
        "--model-dir",
        str(base),
        "--data",
        str(workdir / "train.jsonl"),
        "--output-dir",
        str(workdir / name),
        "--checkpoint-dir",
        str(checkpoints or workdir / f"{name}-ck"),
    ]


def _run(argv: list[str]) -> dict:
    assert sft.main(argv) == 0
    output = Path(argv[argv.index("--output-dir") + 1])
    return json.loads((output / "metrics.json").read_text())


def _losses(metrics: dict) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in metrics["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def reference(workdir, base_model_dir) -> dict:
    """An uninterrupted 4-step run."""
    return _run(_argv(workdir, base_model_dir, "reference"))


@pytest.fixture(scope="module")
def killed_then_resumed(workdir, base_model_dir) -> dict:
    """A subprocess run SIGKILLed once checkpoint-2 is complete, then the same run started again."""
    argv = _argv(workdir, base_model_dir, "crashy")
    checkpoints = Path(argv[argv.index("--checkpoint-dir") + 1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    with open(workdir / "crashy.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.train.sft", *argv],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        try:
            while not (checkpoints / "checkpoint-2" / COMPLETE_MARKER).exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"no checkpoint-2 (exit {process.returncode}):\n"
                        + (workdir / "crashy.log").read_text()[-3000:]
                    )
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
    at_kill = {p.name: (p / COMPLETE_MARKER).exists() for p in checkpoints.glob("checkpoint-*")}
    crash_copy = workdir / "crashy-ck-at-kill"
    shutil.copytree(checkpoints, crash_copy)
    metrics = _run(argv)
    return {
        "returncode": process.returncode,
        "at_kill": at_kill,
        "metrics": metrics,
        "checkpoints": checkpoints,
        "crash_copy": crash_copy,
        "output": workdir / "crashy",
    }


def test_same_seed_data_and_config_give_the_same_loss_curve(workdir, base_model_dir, reference):
    again = _run(_argv(workdir, base_model_dir, "again"))

    first, second = _losses(reference), _losses(again)
    assert sorted(first) == [1, 2, 3, 4]
    assert first == pytest.approx(second, abs=1e-6)
    assert reference["train_loss"] == pytest.approx(again["train_loss"], abs=1e-6)
    assert len({round(v, 4) for v in first.values()}) > 1  # a real curve, not a constant


def test_sigkill_mid_training_resumes_from_the_last_complete_checkpoint(killed_then_resumed, reference):
    run = killed_then_resumed
    metrics = run["metrics"]

    assert run["returncode"] == -signal.SIGKILL
    assert run["at_kill"].get("checkpoint-2") is True and "checkpoint-4" not in run["at_kill"]
    assert metrics["resumed_from"] == "checkpoint-2"  # at most one checkpoint interval (2 steps) lost
    assert metrics["global_step"] == 4
    losses = _losses(metrics)
    assert sorted(losses) == [1, 2, 3, 4]  # the log history of steps 1-2 came back with the checkpoint
    # Optimizer, scheduler, RNG and data order were restored: the curve continues where it stopped.
    assert losses == pytest.approx(_losses(reference), abs=1e-5)
    assert (run["output"] / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in run["checkpoints"].glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert common.checkpoint_problem(run["checkpoints"] / "checkpoint-4", RUN_KEY) is None


def test_truncated_newest_checkpoint_falls_back_to_the_one_before(
    killed_then_resumed, workdir, base_model_dir
):
    checkpoints = workdir / "truncated-ck"
    shutil.copytree(killed_then_resumed["checkpoints"], checkpoints)
    adapter = checkpoints / "checkpoint-4" / "adapter_model.safetensors"
    with open(adapter, "r+b") as handle:
        handle.truncate(adapter.stat().st_size // 2)

    metrics = _run(_argv(workdir, base_model_dir, "truncated", checkpoints=checkpoints))

    assert metrics["resumed_from"] == "checkpoint-2" and metrics["global_step"] == 4
    assert common.checkpoint_problem(checkpoints / "checkpoint-4", RUN_KEY) is None  # rewritten whole


def test_another_runs_checkpoints_are_never_restored(killed_then_resumed, workdir, base_model_dir):
    checkpoints = workdir / "foreign-ck"
    shutil.copytree(killed_then_resumed["checkpoints"], checkpoints)

    metrics = _run(
        _argv(workdir, base_model_dir, "foreign", run_key="another-run", checkpoints=checkpoints, max_steps=1)
    )

    assert metrics["resumed_from"] is None and metrics["global_step"] == 1
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (
        json.loads((checkpoints / "checkpoint-1" / COMPLETE_MARKER).read_text())["run_key"] == "another-run"
    )


def test_a_run_killed_after_its_last_checkpoint_finishes_without_training_again(
    killed_then_resumed, workdir, base_model_dir
):
    """Killed between the final checkpoint and writing the output: the rerun only writes the output."""
    checkpoints = workdir / "finished-ck"
    shutil.copytree(killed_then_resumed["checkpoints"], checkpoints)

    metrics = _run(_argv(workdir, base_model_dir, "finished", checkpoints=checkpoints))

    assert metrics["resumed_from"] == "checkpoint-4" and metrics["global_step"] == 4
    assert _losses(metrics) == _losses(killed_then_resumed["metrics"])
    assert (workdir / "finished" / "adapter_model.safetensors").read_bytes() == (
        killed_then_resumed["output"] / "adapter_model.safetensors"
    ).read_bytes()
