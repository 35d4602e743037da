"""The SFT and DPO entrypoints with the real SmolLM2-135M on CPU: eval loss, continuing an adapter, DPO,
and (on a CUDA machine) QLoRA.

Runs are tiny (8 short rows, batch 2, 1-2 steps, LoRA r=4) and use one CPU thread (see
test_train_resume.py for why).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.recipe import TrainConfig
from tasks.train import dpo, sft

pytestmark = pytest.mark.integration

QA = [
    (
        "What does a p-value measure?",
        "How surprising the data are if the null hypothesis is true.",
        "The probability that the null hypothesis is true.",
    ),
    (
        "What is a confidence interval?",
        "A range that covers the true value in 95% of repeated samples.",
        "A range that contains the true value with 95% probability.",
    ),
    (
        "Why standardize features?",
        "So that penalties and distances treat every feature on one scale.",
        "Because it makes the model more accurate.",
    ),
    (
        "What is overfitting?",
        "Fitting noise in the training data, which hurts held-out accuracy.",
        "Training for too long.",
    ),
    (
        "What is a prior?",
        "What you believe about a parameter before seeing the data.",
        "The first data point.",
    ),
    ("When is the median better than the mean?", "When the data are skewed or have outliers.", "Always."),
    (
        "What is bootstrapping?",
        "Resampling the data with replacement to estimate variability.",
        "Starting a computer.",
    ),
    (
        "What does R squared say?",
        "The share of the outcome's variance the model explains.",
        "Whether the model is correct.",
    ),
]


def _sft_rows(items) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a, _ in items
    ]


def _pairs(items) -> list[dict]:
    return [
        {
            "id": f"pair-{i}",
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        }
        for i, (q, good, bad) in enumerate(items)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(folder: Path, name: str, **fields) -> Path:
    base = {
        "lora": {"r": 4, "alpha": 8},
        "save_steps": 2,
        "seed": 3,
        "sft": {
            "max_steps": 2,
            "batch_size": 2,
            "max_seq_len": 64,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
        },
        "dpo": {
            "max_steps": 1,
            "batch_size": 2,
            "max_seq_len": 64,
            "learning_rate": 5e-5,
            "warmup_ratio": 0.0,
        },
    }
    for key, value in fields.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    train = TrainConfig.model_validate(base).model_dump(mode="json")
    path = folder / f"{name}-config.json"
    path.write_text(json.dumps({"train": train, "run_key": f"entrypoints-{name}"}))
    return path


def _argv(config: Path, base: Path, data: Path, output: Path, **extra: Path) -> list[str]:
    argv = [
        "--config",
        str(config),
        "--model-dir",
        str(base),
        "--data",
        str(data),
        "--output-dir",
        str(output),
        "--checkpoint-dir",
        str(output.parent / f"{output.name}-ck"),
    ]
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def _metrics(output: Path) -> dict:
    return json.loads((output / "metrics.json").read_text())


def _adapter(output: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(output / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("entrypoints")
    _write_jsonl(folder / "train.jsonl", _sft_rows(QA))
    _write_jsonl(folder / "eval.jsonl", _sft_rows(QA[:2]))
    _write_jsonl(folder / "pairs.jsonl", _pairs(QA[:4]))
    yield folder
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def sft_output(workdir, base_model_dir) -> Path:
    """Two SFT steps with held-out data; evaluated at step 2 (save_steps)."""
    output = workdir / "sft"
    argv = _argv(
        _config(workdir, "sft"),
        base_model_dir,
        workdir / "train.jsonl",
        output,
        eval_data=workdir / "eval.jsonl",
    )
    assert sft.main(argv) == 0
    return output


def test_sft_with_eval_data_records_eval_loss(sft_output):
    metrics = _metrics(sft_output)

    evals = [e for e in metrics["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2]
    assert metrics["eval_loss"] == evals[-1]["eval_loss"] > 0
    assert metrics["global_step"] == 2 and metrics["resumed_from"] is None and metrics["examples"] == 8
    assert [e["step"] for e in metrics["log_history"] if "loss" in e] == [1, 2]
    assert metrics["tokens_seen"] > 0
    assert (metrics["device"], metrics["peak_gpu_memory_bytes"]) == ("cpu", None)  # CI has no GPU
    assert sorted(p.name for p in sft_output.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
    ]


def test_sft_measures_the_held_out_loss_every_eval_steps_and_at_the_end(workdir, base_model_dir):
    """``eval_steps`` apart from ``save_steps``: self-critique's quick SFT checkpoints every 8 of 20 steps
    but measures once, at the end (each measurement ~8 s on 2 cores). Not operational: a DataLoader draws
    its seed from torch's generator, so an evaluation moves the dropout of the steps after it (the end
    loss here differed by 2e-4 between evaluating at every step and at the end only)."""
    output = workdir / "eval-at-end"
    config = _config(workdir, "eval-at-end", save_steps=1, eval_steps=3, sft={"max_steps": 3})
    assert sft.main(_argv(config, base_model_dir, workdir / "train.jsonl", output,
                          eval_data=workdir / "eval.jsonl")) == 0
    metrics = _metrics(output)
    assert [e["step"] for e in metrics["log_history"] if "eval_loss" in e] == [3]
    assert metrics["eval_loss"] > 0 and metrics["global_step"] == 3


def test_sft_with_packing_trains_on_full_rows(workdir, base_model_dir):
    """8 rows of ~36 tokens packed into 128-token rows: one step of 2 rows sees ~6 examples, not 2."""
    output = workdir / "packed"
    config = _config(workdir, "packed", sft={"max_steps": 1, "max_seq_len": 128, "packing": True})

    assert sft.main(_argv(config, base_model_dir, workdir / "train.jsonl", output)) == 0

    metrics = _metrics(output)
    assert metrics["packing"] is True and metrics["global_step"] == 1
    (step,) = [e for e in metrics["log_history"] if "loss" in e]
    assert 0 < step["loss"] < 20
    assert metrics["tokens_seen"] > 150  # two unpacked rows would hold at most ~90 tokens


def test_training_continues_from_an_initial_adapter(sft_output, workdir, base_model_dir):
    """A new adapter would start with lora_B = 0; one step at a tiny learning rate keeps the old weights."""
    output = workdir / "continued"
    config = _config(workdir, "continued", sft={"max_steps": 1, "learning_rate": 1e-7, "warmup_ratio": 0.0})

    assert (
        sft.main(_argv(config, base_model_dir, workdir / "train.jsonl", output, init_adapter=sft_output)) == 0
    )

    before, after = _adapter(sft_output), _adapter(output)
    assert set(before) == set(after)
    lora_b = [name for name in before if "lora_B" in name]
    assert lora_b and max(before[n].abs().max().item() for n in lora_b) > 1e-4  # SFT really moved them
    for name in before:
        assert (after[name] - before[name]).abs().max().item() < 1e-5, name
    assert any(not after[n].equal(before[n]) for n in before)  # and this run took a step from there
    assert _metrics(output)["global_step"] == 1


def test_dpo_continues_the_sft_adapter_on_preference_pairs(sft_output, workdir, base_model_dir):
    output = workdir / "dpo"

    assert (
        dpo.main(
            _argv(
                _config(workdir, "dpo"),
                base_model_dir,
                workdir / "pairs.jsonl",
                output,
                init_adapter=sft_output,
            )
        )
        == 0
    )

    metrics = _metrics(output)
    assert metrics["method"] == "dpo" and metrics["global_step"] == 1 and metrics["pairs"] == 4
    (step,) = [e for e in metrics["log_history"] if "loss" in e]
    # The reference is the SFT model itself, so before any update the policy equals it: loss = log 2.
    assert step["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert any(key.startswith("rewards/") for key in step)
    assert (output / "adapter_model.safetensors").is_file()


@pytest.mark.gpu
def test_qlora_4bit_sft_on_cuda(workdir, base_model_dir):
    output = workdir / "qlora"
    config = _config(workdir, "qlora", quantization="4bit", precision="bf16")

    assert sft.main(_argv(config, base_model_dir, workdir / "train.jsonl", output)) == 0

    metrics = _metrics(output)
    assert metrics["global_step"] == 2 and all(e["loss"] > 0 for e in metrics["log_history"] if "loss" in e)
    assert (output / "adapter_model.safetensors").is_file()
    assert metrics["peak_gpu_memory_bytes"] > 0 and metrics["device"] != "cpu"
