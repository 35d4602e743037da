"""bench/gpu_train.py, the GPU session's training benchmark, and bench/train_throughput.py, checked on a CPU
with a tiny model: a session that is lent a GPU should spend its minutes measuring, not debugging the script."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench import gpu_train, train_throughput

pytestmark = pytest.mark.integration


def test_the_1b_shape_and_what_lora_training_costs_a_token():
    shape = {**gpu_train.SIZES["1b"], "vocab_size": 49152}
    frozen, lora = gpu_train.linear_weights(shape)
    assert frozen == 16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192) + 2048 * 49152  # ~1.07 B
    assert lora == 16 * 16 * ((2048 + 2048) * 2 + (2048 + 512) * 2 + (2048 + 8192) * 3)
    assert gpu_train.flops_per_token(shape, 100.0) == 4 * frozen + 6 * lora + 12 * 16 * 2048 * 100.0
    assert gpu_train.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_train.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_train.peak_tflops("NVIDIA H200") == 989.4 and gpu_train.peak_tflops("Tesla T4") is None


@pytest.fixture
def torch_settings():
    """The entrypoint turns deterministic algorithms on for its process: give the other tests theirs back."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def test_a_tiny_model_trains_through_the_sft_entrypoint_and_the_report_is_written(tmp_path, capsys, torch_settings):
    kit, out = tmp_path / "kit", tmp_path / "gpu_train.json"
    assert gpu_train.main(["--save-kit", str(kit)]) == 0  # what a GPU machine gets instead of the base model
    assert (kit / "tokenizer" / "tokenizer.json").is_file() and (kit / "conversations.jsonl").stat().st_size
    assert gpu_train.main(["--size", "tiny", "--arms", "lora-fp32", "--steps", "2", "--dpo-steps", "1",
                           "--batch-size", "2", "--max-seq-len", "128", "--kit", str(kit), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    arm = report["arms"]["lora-fp32"]
    assert report["device"] == "cpu" and report["model"]["num_hidden_layers"] == 2
    assert arm["steps"] == 2 and arm["tokens"] > 128 and arm["tokens_per_s"] > 0
    assert arm["mfu"] is None and arm["peak_memory_gib"] is None  # no GPU, no peak to divide by
    assert 0 < report["data"]["mean_context"] <= 128
    dpo = arm["dpo"]
    assert dpo["steps"] == 1 and dpo["tokens"] > 0 and dpo["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    printed = capsys.readouterr().out
    assert "| lora-fp32 | 2 |" in printed and "| lora-fp32 | 1 |" in printed


def test_gpu_arms_are_refused_on_a_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        gpu_train.main(["--size", "tiny", "--arms", "qlora"])


def test_the_kit_leaves_out_the_kernels_the_gpu_cannot_load(tmp_path):
    import zipfile

    from bench.gpu_kit import UNUSED_BNB, slim_wheel

    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
             "bitsandbytes/libbitsandbytes_cuda126.so", "bitsandbytes/libbitsandbytes_cuda130.so",
             "bitsandbytes/libbitsandbytes_rocm72.so"]
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, b"x" * 1000)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "".join(f"{n},sha256=abc,1000\n" for n in names))
    assert slim_wheel(wheel, UNUSED_BNB) > 0
    with zipfile.ZipFile(wheel) as zf:
        kept = set(zf.namelist())
        record = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert kept == {names[0], names[1], names[3], "bitsandbytes-0.50.2.dist-info/RECORD"}
    assert "cuda130" in record and "cuda126" not in record and "rocm" not in record


def test_throughput_arms_train_the_same_tokens_and_all_recompute_activations(tmp_path, monkeypatch, torch_settings):
    """--gradient-checkpointing reaches every arm: the plain loop's model and the entrypoint's alike."""
    import transformers.modeling_utils

    kit, out = tmp_path / "kit", tmp_path / "train_throughput.json"
    assert gpu_train.main(["--save-kit", str(kit)]) == 0
    recomputed: Counter[str] = Counter()
    arm = {"name": ""}
    checkpoint = transformers.modeling_utils.checkpoint

    def counting_checkpoint(*args, **kwargs):
        recomputed[arm["name"]] += 1
        return checkpoint(*args, **kwargs)

    def named(name_of, run):
        def wrapper(*args, **kwargs):
            arm["name"] = name_of(args)
            return run(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    monkeypatch.setattr(train_throughput, "run_plain", named(lambda a: "plain", train_throughput.run_plain))
    monkeypatch.setattr(train_throughput, "run_distillery", named(
        lambda a: "distillery+packing" if a[4] else "distillery", train_throughput.run_distillery))
    assert train_throughput.main(["--random-model", "tiny", "--kit", str(kit), "--rows", "6", "--batch-size", "2",
                                  "--max-seq-len", "256", "--gradient-checkpointing", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    arms = report["arms"]
    assert set(arms) == set(recomputed) == {"plain", "distillery", "distillery+packing"}
    assert all(count > 0 for count in recomputed.values())
    rows = report["data"]["rows"]  # those whose question leaves room for an answer in 256 tokens
    assert report["config"]["gradient_checkpointing"] is True and 2 < rows <= 6
    assert 0 < arms["plain"]["padding_share"] < 1
    assert arms["distillery"]["steps"] == arms["plain"]["steps"] == (rows + 1) // 2
    assert arms["distillery+packing"]["steps"] <= arms["plain"]["steps"]
    for name in ("distillery", "distillery+packing"):  # the tokens the plain arm trains on, packed or not
        assert arms[name]["tokens_counted_by_trainer"] == report["data"]["tokens"]
