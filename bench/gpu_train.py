"""LoRA and QLoRA SFT and DPO on a GPU: throughput, model FLOPs utilization, peak memory (docs/benchmarks.md, 5).

    python bench/gpu_train.py [--size 1b] [--arms lora,qlora] [--steps 40] [--dpo-steps 10] [--batch-size 8]
                              [--max-seq-len 1024] [--kit DIR] [--peak-tflops X]
                              [--out bench/results/gpu_train.json]

The model is llama-architecture with random weights (speed does not depend on them) in Llama 3.2 1B's
shape: hidden 2048, 16 layers, 32 query and 8 key-value heads, MLP 8192, tied embeddings; with
SmolLM2's tokenizer (49,152 tokens) that is 1.07 B parameters. ``--size tiny`` is a model small enough
for a CPU, to check the script. Each arm trains it with distillery's SFT entrypoint (``tasks.train.sft``,
in this process) for ``--steps`` steps on real variable-length conversations (the Stack Exchange sample
dump's accepted answers, cycled), packed into ``--max-seq-len`` rows, LoRA r=16 on every linear layer:

- ``lora``: bf16 weights and compute;
- ``qlora``: 4-bit NF4 weights with double quantization (bitsandbytes), bf16 compute;
- ``lora-fp32``: fp32 (the only arm a CPU runs).

After its SFT each arm trains DPO for ``--dpo-steps`` steps continuing the SFT adapter, as the pipeline
does (the reference is the SFT model merged: for QLoRA, an adapter merged into 4-bit weights), on pairs
of an accepted answer over another question's; its first loss should be log 2.

Throughput is the entrypoint's own count of trained (non-padding) tokens over the time of
``trainer.train()`` (the first steps' warm-up included). Peak memory is what PyTorch allocated on the GPU
during the arm (``metrics.json``'s ``peak_gpu_memory_bytes``; reset before each arm).

Model FLOPs utilization counts the arithmetic LoRA training needs per token, divided by the GPU's
dense bf16 peak: through the frozen linear layers (N weights) the forward pass (2N) and the gradient
with respect to their inputs (2N), but no weight gradient; the adapters' forward and backward
(6 x their weights); and attention's two products (scores, and the weighted values: 4 x hidden x the
context a token attends to, forward; twice that backward), 12 x layers x hidden x the mean context, which
a causal mask makes about half an example's length (the packed examples', not the row's: the mask keeps
each example to itself). A full
fine-tune would count 6N; this is the work LoRA leaves to do, so the number says how busy the GPU is.

A lent GPU machine can fetch nothing: ``make gpu-kit`` puts the wheels its image lacks
(bench/gpu_wheels.txt), the tokenizer and the conversations (``--save-kit``) into ``.gpu/``, and
docs/benchmarks.md, section 5, has the command that runs this script there.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_throughput import (  # after the path is set
    KIT_TOKENIZER,
    chat_ids,
    ensure_model,
    load_rows,
    run_entrypoint_in_process,
    save_kit,
    versions,
)

SIZES = {
    # Llama 3.2 1B's shape (its vocabulary aside).
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
ARMS = {"lora": ("bf16", "none"), "qlora": ("bf16", "4bit"), "lora-fp32": ("fp32", "none")}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": LINEAR}
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first name that
# occurs in the device's name wins.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0)]


def gib(nbytes: int | None) -> float | None:
    return round(nbytes / 2**30, 2) if nbytes else None


def peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def build_model(size: str, tokenizer_dir: Path, folder: Path) -> dict:
    """A random-weights llama model of ``size`` with the tokenizer, saved as a transformers folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SIZES[size])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return {"parameters": parameters, **SIZES[size], "vocab_size": len(tokenizer)}


def linear_weights(shape: dict) -> tuple[int, int]:
    """The frozen linear layers' weights (the LM head included) and LoRA's, for ``LORA``'s targets."""
    d, ff, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = d * shape["num_key_value_heads"] // shape["num_attention_heads"]
    # (in, out) of each target module
    dims = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
            "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}
    frozen = layers * sum(i * o for i, o in dims.values()) + d * shape["vocab_size"]
    lora = layers * sum(LORA["r"] * (i + o) for name, (i, o) in dims.items() if name in LORA["target_modules"])
    return frozen, lora


def flops_per_token(shape: dict, mean_context: float) -> float:
    """What LoRA training needs per token (module docstring)."""
    frozen, lora = linear_weights(shape)
    attention = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * mean_context
    return 4 * frozen + 6 * lora + attention


def example_lengths(rows: list[dict], tokenizer_dir: Path, max_len: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [min(len(chat_ids(tokenizer, row["messages"])), max_len) for row in rows]


def preference_pairs(rows: list[dict]) -> list[dict]:
    """DPO pairs from the conversations: the accepted answer over the next question's answer."""
    return [{"prompt": row["messages"][:-1], "chosen": row["messages"][-1:],
             "rejected": rows[(i + 1) % len(rows)]["messages"][-1:]} for i, row in enumerate(rows)]


def run_method(method: str, arm: str, model_dir: Path, data: Path, args: argparse.Namespace, work: Path,
               init_adapter: Path | None = None) -> dict:
    """One arm's SFT (packed) or DPO (continuing ``init_adapter``, as the pipeline does) through the
    entrypoint, in this process; its ``metrics.json``."""
    import torch

    from tasks.core.recipe import TrainConfig

    precision, quantization = ARMS[arm]
    optim = {"learning_rate": 2e-4, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
             "packing": True, "epochs": 1, "max_steps": args.steps, "warmup_ratio": 0.1, "scheduler": "cosine"}
    if method == "dpo":  # pairs are two sequences each, and the reference reads both again
        optim.update(learning_rate=5e-5, batch_size=max(1, args.batch_size // 2), packing=False,
                     max_steps=args.dpo_steps)
    train = TrainConfig.model_validate({
        "lora": LORA, "seed": 42, "save_steps": 100_000, "precision": precision, "quantization": quantization,
        method: optim,
    })
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    metrics = run_entrypoint_in_process(method, train, model_dir, data, work, f"{arm}-{method}", init_adapter)
    gc.collect()
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--arms", default=None, help="Comma-separated, of " + ", ".join(ARMS)
                        + " (default: lora,qlora on a GPU, lora-fp32 on a CPU).")
    parser.add_argument("--steps", type=int, default=40, help="SFT optimizer steps per arm.")
    parser.add_argument("--dpo-steps", type=int, default=10,
                        help="DPO steps per arm after its SFT, continuing the SFT adapter (0: no DPO).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--kit", type=Path, default=None,
                        help="A GPU kit folder (make gpu-kit): SmolLM2's tokenizer and the conversations, for a "
                        "machine without the base model or the collectors' packages (default: from here).")
    parser.add_argument("--save-kit", type=Path, default=None,
                        help="Only write the kit into this folder (to carry to a GPU machine) and exit.")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="The GPU's dense bf16 peak (default: from its name; unknown: no MFU).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_train.json")
    args = parser.parse_args(argv)

    if args.save_kit:
        save_kit(args.save_kit)
        print(f"tokenizer and conversations saved to {args.save_kit}")
        return 0

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cuda = torch.cuda.is_available()
    arms = (args.arms or ("lora,qlora" if cuda else "lora-fp32")).split(",")
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}: choose from {', '.join(ARMS)}")
    if not cuda and any(ARMS[arm] != ("fp32", "none") for arm in arms):
        parser.error("bf16 and 4-bit arms need a CUDA GPU; on a CPU run --arms lora-fp32 (with --size tiny)")
    device = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or (peak_tflops(device) if cuda else None)
    tokenizer_dir = args.kit / KIT_TOKENIZER if args.kit else ensure_model(None)

    # Enough rows, cycled, to fill every step's packed rows.
    sample = load_rows(10_000, args.kit)
    sample_lengths = example_lengths(sample, tokenizer_dir, args.max_seq_len)
    needed = math.ceil(1.2 * args.steps * args.batch_size * args.max_seq_len / (sum(sample_lengths) / len(sample)))
    rows = [sample[i % len(sample)] for i in range(needed)]
    lengths = [sample_lengths[i % len(sample)] for i in range(needed)]
    # The mean context a trained token attends to: a token at position i of an example sees i + 1.
    mean_context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)

    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-train-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        print(f"building the {args.size} model ...", file=sys.stderr, flush=True)
        shape = build_model(args.size, tokenizer_dir, model_dir)
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        per_token = flops_per_token(shape, mean_context)
        pairs = work / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(pair) + "\n" for pair in preference_pairs(sample)))
        for arm in arms:
            print(f"{arm}: SFT ...", file=sys.stderr, flush=True)
            metrics = run_method("sft", arm, model_dir, data, args, work)
            tokens, seconds = metrics["tokens_seen"], metrics["train_runtime_s"]
            rate = tokens / seconds
            results[arm] = {
                "precision": ARMS[arm][0], "quantization": ARMS[arm][1], "steps": metrics["global_step"],
                "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1),
                "mfu": round(rate * per_token / (peak * 1e12), 4) if peak else None,
                "peak_memory_gib": gib(metrics.get("peak_gpu_memory_bytes")),
                "train_loss": metrics.get("train_loss"),
            }
            if args.dpo_steps:
                print(f"{arm}: DPO from its SFT adapter ...", file=sys.stderr, flush=True)
                dpo_metrics = run_method("dpo", arm, model_dir, pairs, args, work, init_adapter=metrics["output"])
                losses = [e["loss"] for e in dpo_metrics["log_history"] if "loss" in e]
                results[arm]["dpo"] = {
                    "steps": dpo_metrics["global_step"], "tokens": dpo_metrics["tokens_seen"],
                    "tokens_per_s": round(dpo_metrics["tokens_seen"] / dpo_metrics["train_runtime_s"], 1),
                    "peak_memory_gib": gib(dpo_metrics.get("peak_gpu_memory_bytes")),
                    # The reference is the SFT model itself: before any update the loss is log 2 = 0.6931,
                    # unless merging the adapter into (4-bit) weights moved the reference.
                    "first_loss": losses[0] if losses else None,
                }
    if "lora" in results and "qlora" in results and results["lora"]["peak_memory_gib"]:
        results["qlora"]["memory_vs_lora"] = round(
            results["qlora"]["peak_memory_gib"] / results["lora"]["peak_memory_gib"], 3)

    frozen, lora = linear_weights(shape)
    report = {
        "benchmark": "gpu_train",
        "command": "python bench/gpu_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device,
        "peak_bf16_tflops": peak,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": versions(),
        "model": {**shape, "size": args.size, "frozen_linear_weights": frozen, "lora_weights": lora},
        "config": {"steps": args.steps, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
                   "packing": True, "lora": LORA},
        "data": {"rows": len(rows), "distinct_rows": len(sample), "mean_length": round(sum(lengths) / len(lengths), 1),
                 "mean_context": round(mean_context, 1)},
        "flops_per_token": per_token,
        "arms": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def table(report: dict) -> str:
    lines = [f"{report['model']['parameters'] / 1e9:.2f} B parameters, {report['device']}",
             "", "| arm | steps | tokens/s | MFU | peak memory GiB | vs LoRA memory |", "|---|---|---|---|---|---|"]
    for arm, r in report["arms"].items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"| {arm} | {r['steps']} | {r['tokens_per_s']} | {mfu} | {r['peak_memory_gib'] or '-'} "
                     f"| {r.get('memory_vs_lora', '-')} |")
    dpo = {arm: r["dpo"] for arm, r in report["arms"].items() if "dpo" in r}
    if dpo:
        lines += ["", "| arm, DPO from its SFT adapter | steps | tokens/s | peak memory GiB | first loss (log 2: 0.6931) |",
                  "|---|---|---|---|---|"]
        for arm, r in dpo.items():
            lines.append(f"| {arm} | {r['steps']} | {r['tokens_per_s']} | {r['peak_memory_gib'] or '-'} "
                         f"| {r['first_loss']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
