"""The training scripts' shared setup: SageMaker path conventions, config checks, checkpoint markers.

Checkpoint folders here are hand-made (files of known sizes plus our marker) so every way a
checkpoint can be unusable is covered without training; tests/integration/test_train_resume.py
does the same with real checkpoints of a killed run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tasks.train import common
from tasks.train.common import COMPLETE_MARKER
from tasks.train.local import TrainingFailed, run_entrypoint

RUN = "run-key-a"


def _checkpoint(root: Path, step: int, run_key: str | None = RUN, adapter_bytes: int = 64) -> Path:
    """A checkpoint folder as the Trainer leaves it, marked complete for ``run_key`` (None: unmarked)."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256))[:adapter_bytes] * 4)
    (folder / "optimizer.pt").write_bytes(b"o" * 100)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if run_key is not None:
        common.mark_checkpoint_complete(folder, run_key, step)
    return folder


# -- which checkpoint is resumed -------------------------------------------------------------


def test_no_folder_or_no_checkpoint_means_fresh_start(tmp_path):
    assert common.find_resume_checkpoint(tmp_path / "absent", RUN) is None
    (tmp_path / "runs").mkdir()
    assert common.find_resume_checkpoint(tmp_path / "runs", RUN) is None


def test_newest_complete_checkpoint_wins_by_step_number_not_name_order(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 4)
    assert common.find_resume_checkpoint(tmp_path, RUN) == tmp_path / "checkpoint-10"


def test_truncated_newest_falls_back_to_the_one_before(tmp_path):
    _checkpoint(tmp_path, 2)
    newest = _checkpoint(tmp_path, 4)
    adapter = newest / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])

    assert "bytes" in common.checkpoint_problem(newest, RUN)
    assert common.find_resume_checkpoint(tmp_path, RUN) == tmp_path / "checkpoint-2"


def test_same_size_rewrite_is_caught_by_the_sha256(tmp_path):
    """A crash while the Trainer rewrites a file in place can leave the old size with new bytes."""
    _checkpoint(tmp_path, 2)
    newest = _checkpoint(tmp_path, 4)
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(b"x" * optimizer.stat().st_size)

    assert "sha256" in common.checkpoint_problem(newest, RUN)
    assert common.find_resume_checkpoint(tmp_path, RUN) == tmp_path / "checkpoint-2"


def test_unmarked_checkpoint_is_incomplete(tmp_path):
    """The Trainer had not finished saving (the marker is written from on_save, after the save)."""
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, run_key=None)
    assert "marker" in common.checkpoint_problem(tmp_path / "checkpoint-4", RUN)
    assert common.find_resume_checkpoint(tmp_path, RUN) == tmp_path / "checkpoint-2"


def test_half_written_marker_and_missing_file_are_incomplete(tmp_path):
    first = _checkpoint(tmp_path, 2)
    (first / COMPLETE_MARKER).write_text('{"run_key": "run-k')
    second = _checkpoint(tmp_path, 4)
    (second / "optimizer.pt").unlink()

    assert "unreadable" in common.checkpoint_problem(first, RUN)
    assert "missing" in common.checkpoint_problem(second, RUN)
    assert common.find_resume_checkpoint(tmp_path, RUN) is None


def test_another_runs_checkpoint_is_never_restored(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 8, run_key="run-key-b")

    assert "another run" in common.checkpoint_problem(tmp_path / "checkpoint-8", RUN)
    assert common.find_resume_checkpoint(tmp_path, RUN) == tmp_path / "checkpoint-2"
    assert common.find_resume_checkpoint(tmp_path, "run-key-c") is None


def test_step_disagreement_is_refused(tmp_path):
    folder = _checkpoint(tmp_path, 4)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    common.mark_checkpoint_complete(folder, RUN, 3)  # marker and state agree, the folder name does not

    assert "step mismatch" in common.checkpoint_problem(folder, RUN)


def test_marker_lists_every_file_with_size_and_sha256(tmp_path):
    folder = _checkpoint(tmp_path, 6)
    info = json.loads((folder / COMPLETE_MARKER).read_text())

    assert info["run_key"] == RUN and info["step"] == 6
    assert set(info["files"]) == {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"}
    assert info["files"]["optimizer.pt"] == 100
    assert set(info["sha256"]) == set(info["files"])
    assert not list(folder.glob("*.tmp"))


def test_prepare_checkpoints_clears_what_could_be_confused_with_this_run(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 1, run_key="run-key-b")  # another run's, older
    _checkpoint(tmp_path, 6, run_key=None)  # ours, interrupted mid-save
    _checkpoint(tmp_path, 8, run_key="run-key-b")  # another run's, newer
    messages: list[str] = []

    resume = common.prepare_checkpoints(tmp_path, RUN, log=messages.append)

    assert resume == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert sum("discarding" in m for m in messages) == 3 and any("resuming" in m for m in messages)


def test_prepare_checkpoints_with_nothing_usable_starts_fresh(tmp_path):
    _checkpoint(tmp_path / "ck", 2, run_key="run-key-b")
    assert common.prepare_checkpoints(tmp_path / "ck", RUN, log=lambda m: None) is None
    assert list((tmp_path / "ck").iterdir()) == []


# -- arguments and config ---------------------------------------------------------------------


def _clear_sagemaker_env(monkeypatch, tmp_path):
    for name in (
        "SM_MODEL_DIR",
        "SM_CHECKPOINT_DIR",
        "TRAINING_JOB_NAME",
        "SM_CHANNEL_MODEL",
        "SM_CHANNEL_TRAIN",
        "SM_CHANNEL_EVAL",
        "SM_CHANNEL_ADAPTER",
        "SM_CHANNEL_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SM_INPUT_DIR", str(tmp_path / "no-sagemaker-here"))


def test_sagemaker_environment_supplies_every_path(monkeypatch, tmp_path):
    _clear_sagemaker_env(monkeypatch, tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text("{}")
    for name, folder in {"MODEL": "model", "TRAIN": "train", "EVAL": "eval", "CONFIG": "config"}.items():
        monkeypatch.setenv(f"SM_CHANNEL_{name}", str(tmp_path / folder))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model-out"))
    monkeypatch.setenv("SM_CHECKPOINT_DIR", str(tmp_path / "ck"))

    args = common.parse_args("sft", [])

    assert args.config == tmp_path / "config" / "config.json"
    assert (args.model_dir, args.data, args.eval_data) == (
        tmp_path / "model",
        tmp_path / "train",
        tmp_path / "eval",
    )
    assert args.init_adapter is None
    assert (args.output_dir, args.checkpoint_dir) == (tmp_path / "model-out", tmp_path / "ck")


def test_standard_channel_folders_are_found_without_the_toolkit_env(monkeypatch, tmp_path):
    _clear_sagemaker_env(monkeypatch, tmp_path)
    input_dir = tmp_path / "input"
    for channel in ("model", "train", "adapter", "config"):
        (input_dir / "data" / channel).mkdir(parents=True)
    (input_dir / "config").mkdir()
    (input_dir / "config" / "inputdataconfig.json").write_text("{}")
    monkeypatch.setenv("SM_INPUT_DIR", str(input_dir))

    args = common.parse_args("dpo", [])

    assert (
        args.model_dir == input_dir / "data" / "model" and args.init_adapter == input_dir / "data" / "adapter"
    )
    assert args.config == input_dir / "data" / "config" / "config.json"
    assert args.eval_data is None
    assert (args.output_dir, args.checkpoint_dir) == (Path("/opt/ml/model"), Path("/opt/ml/checkpoints"))


def test_local_defaults_keep_checkpoints_out_of_the_output(monkeypatch, tmp_path):
    _clear_sagemaker_env(monkeypatch, tmp_path)
    args = common.parse_args(
        "sft",
        [
            "--config",
            "c.json",
            "--model-dir",
            "m",
            "--data",
            "d.jsonl",
            "--output-dir",
            str(tmp_path / "out"),
        ],
    )
    assert args.checkpoint_dir == tmp_path / "out-checkpoints"


def test_missing_required_argument_is_a_usage_error(monkeypatch, tmp_path, capsys):
    _clear_sagemaker_env(monkeypatch, tmp_path)
    with pytest.raises(SystemExit):
        common.parse_args("sft", ["--config", "c.json", "--data", "d.jsonl"])
    assert "--model-dir is required" in capsys.readouterr().err


def test_config_without_run_key_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {}}))
    with pytest.raises(SystemExit, match="run_key"):
        common.load_config(path)


def test_jsonl_rows_reads_a_file_or_every_jsonl_in_a_folder(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"i": 2}\n\n{"i": 3}\n')
    (tmp_path / "a.jsonl").write_text('{"i": 1}\n')
    (tmp_path / "notes.txt").write_text("not data")
    assert [r["i"] for r in common.jsonl_rows(tmp_path)] == [1, 2, 3]
    assert [r["i"] for r in common.jsonl_rows(tmp_path / "a.jsonl")] == [1]


@pytest.mark.parametrize(("r", "alpha"), [(16, 256), (64, 8)])
def test_unusual_alpha_over_r_warns(r, alpha):
    with pytest.warns(UserWarning, match="alpha/r"):
        common.check_lora({"lora": {"r": r, "alpha": alpha}})


@pytest.mark.parametrize(("r", "alpha"), [(16, 32), (8, 8), (4, 16)])
def test_usual_alpha_over_r_is_quiet(r, alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        common.check_lora({"lora": {"r": r, "alpha": alpha}})


# -- QLoRA without CUDA -------------------------------------------------------------------------


def _config_file(tmp_path: Path, **train_overrides) -> Path:
    from tasks.core.recipe import TrainConfig

    train = TrainConfig.model_validate({"lora": {"r": 4, "alpha": 8}, **train_overrides}).model_dump(
        mode="json"
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train": train, "run_key": "qlora"}))
    return path


def test_4bit_without_cuda_stops_with_a_clear_message_before_loading_anything(tmp_path, monkeypatch):
    import torch

    from tasks.train import sft

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
        + "\n"
    )
    argv = [
        "--config",
        str(_config_file(tmp_path, quantization="4bit")),
        "--model-dir",
        str(tmp_path / "no-model"),
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "out"),
    ]

    with pytest.raises(SystemExit) as exit_info:
        sft.main(argv)

    message = str(exit_info.value.code)
    assert "needs a CUDA GPU" in message and "train.quantization=none" in message
    assert not (tmp_path / "out").exists()


# -- the local backend ------------------------------------------------------------------------


def test_local_backend_reports_the_scripts_own_error(tmp_path):
    """A failing script surfaces as TrainingFailed carrying the end of its output (no model needed)."""
    with pytest.raises(TrainingFailed) as failure:
        run_entrypoint(
            "sft",
            {"train": {}, "run_key": "k"},
            model_dir=tmp_path,
            data=tmp_path / "d.jsonl",
            output_dir=tmp_path / "out",
            checkpoint_dir=tmp_path / "ck",
            log=lambda m: None,
        )
    assert "sft training exited with 1" in str(failure.value)
    assert "KeyError: 'lora'" in str(failure.value)  # the script's traceback, not just an exit code


def test_entrypoint_help_runs_without_heavy_imports():
    result = subprocess.run(
        [sys.executable, "-m", "tasks.train.dpo", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "--init-adapter" in result.stdout


@pytest.mark.parametrize("max_steps", [1, 2, 3, 12, -1])
def test_warmup_never_takes_every_step(max_steps):
    import torch
    from transformers import TrainingArguments, get_scheduler

    opt = {"warmup_ratio": 0.1, "max_steps": max_steps}
    args = TrainingArguments(output_dir="unused", warmup_steps=common.warmup_steps(opt), report_to=[])
    steps = max_steps if max_steps > 0 else 50  # by epochs: the trainer's own count
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                             num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert max(rates) > 0, rates  # at least one real update
    if max_steps in (12, -1):
        assert rates[0] == 0.0  # a real warmup where there are steps to spare


def test_operational_settings_neither_retrain_nor_restart_a_run():
    from types import SimpleNamespace

    from tasks.core.caching import stage_cache_key
    from tasks.core.recipe import TrainConfig
    from tasks.core.refs import ArtifactRef
    from tasks.train.tasks import train_adapter, training_run_key

    base = ArtifactRef(uri="file:///b", sha256="b" * 64, bytes=1, kind="model")
    data = ArtifactRef(uri="file:///d", sha256="d" * 64, bytes=1, kind="dataset")
    context = SimpleNamespace(task=train_adapter)

    def keys(train: TrainConfig) -> tuple[str, str]:
        params = {"method": "sft", "base_model": base, "data": data, "train": train}
        return training_run_key("sft", base, data, None, train), stage_cache_key(context, params)

    plain = TrainConfig(backend="sagemaker")
    watched = TrainConfig.model_validate({
        "backend": "sagemaker", "save_steps": 10,
        "sagemaker": {"poll_s": 5, "endpoint_url": "http://127.0.0.1:5000", "spot": False,
                      "max_runtime_s": 600, "max_wait_s": 900}})
    assert keys(watched) == keys(plain)
    for changed in (TrainConfig(backend="sagemaker", seed=7),
                    TrainConfig.model_validate({"backend": "sagemaker", "sagemaker": {"instance_type": "ml.g6.xlarge"}}),
                    TrainConfig(backend="sagemaker", lora={"r": 8})):
        run_key, cache_key = keys(changed)
        assert run_key != keys(plain)[0] and cache_key != keys(plain)[1]


def test_a_script_killed_for_memory_says_what_to_change(tmp_path, monkeypatch):
    """SIGKILL is what the kernel's out-of-memory killer sends: the error names it and the settings to lower."""
    killer = tmp_path / "python"
    killer.write_text("#!/bin/sh\nkill -9 $$\n")
    killer.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(killer))
    with pytest.raises(TrainingFailed) as failure:
        run_entrypoint("dpo", {"train": {}, "run_key": "k"}, model_dir=tmp_path, data=tmp_path / "d.jsonl",
                       output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ck", log=lambda m: None)
    message = str(failure.value)
    assert message.startswith("dpo training was killed by SIGKILL, most often the kernel's out-of-memory killer")
    assert "train.dpo.batch_size" in message and "unchanged settings resumes from the last complete" in message
