"""SFT training throughput: distillery's entrypoint against a plain transformers Trainer + peft loop.

    python bench/train_throughput.py [--rows 6] [--max-seq-len 512] [--batch-size 4] [--threads 1]
                                     [--repeats 1] [--model-dir DIR] [--device cpu|cuda]
                                     [--random-model 1b|tiny] [--kit DIR] [--gradient-checkpointing]
                                     [--out bench/results/train_throughput.json]

Same model (SmolLM2-135M, fp32 on the CPU by default; on a GPU, ``--device cuda``, bf16; or a
random-weights llama model, ``--random-model``), same real variable-length data (accepted Q&A pairs from the
ai.stackexchange sample dump, one system + user + assistant conversation each), same LoRA config,
optimizer settings, batch size, seed, checkpointing (a save at the end) and, with
``--gradient-checkpointing``, activations recomputed in the backward pass, one epoch each:

- ``plain``: ``transformers.Trainer`` on a ``peft`` model, tokenized by hand with the chat template
  (loss on the answer only), each batch padded by hand to its longest row. No trl.
- ``distillery``: ``python -m tasks.train.sft`` (run in-process through its ``main``) without packing.
- ``distillery+packing``: the same with ``train.sft.packing=true`` (best-fit packing into
  ``max_seq_len`` rows, no padding, attention kept within each example).

Every arm trains on exactly the same tokens (rows are truncated to ``max_seq_len`` the same way), so
throughput is those tokens divided by the time of ``trainer.train()``: wall time, and this process's
CPU time, which other work on a shared machine disturbs much less (model loading and tokenization
are excluded for every arm; the entrypoint's checkpoint marker, with its sha256 and fsync, is
included). With packing there are fewer, fuller steps. ``--repeats`` runs the arms in rotating
order; each arm's times are averaged and every run's throughput is listed. Prints a Markdown table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DUMP = REPO / "data" / "sample" / "stackexchange" / "ai.stackexchange.com" / "Posts.xml"
SYSTEM = "You are a careful machine learning expert. Answer clearly and concisely."
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LEARNING_RATE = 2e-4
SEED = 42
# A GPU kit (``make gpu-kit``): what a machine that can fetch nothing and lacks the collectors' packages
# needs from this one, SmolLM2's tokenizer and the dump's conversations.
KIT_TOKENIZER, KIT_ROWS = "tokenizer", "conversations.jsonl"


def load_rows(count: int, kit: Path | None = None) -> list[dict]:
    """The first ``count`` conversations of the dump; from a GPU kit's copy of them with ``kit``."""
    if kit is not None:
        rows = [json.loads(line) for line in (kit / KIT_ROWS).read_text().splitlines()]
        return rows[:count]
    from tasks.collect.stackexchange import parse_posts_xml

    pairs, _ = parse_posts_xml(DUMP, "ai.stackexchange.com")
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{p.title}\n\n{p.question}"},
                {"role": "assistant", "content": p.answer},
            ]
        }
        for p in pairs[:count]
    ]


def chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tokenize(rows: list[dict], tokenizer, max_len: int) -> tuple[list[dict], list[dict]]:
    """Hand-written chat tokenization: loss on the answer only, the end cut at ``max_len``.

    Rows whose question alone fills ``max_len`` leave nothing to learn and are left out (trl drops
    them too), so every arm sees the same rows. Returns (kept rows, their tokenized examples).
    """
    kept, examples = [], []
    for row in rows:
        prompt = chat_ids(tokenizer, row["messages"][:-1], add_generation_prompt=True)
        full = chat_ids(tokenizer, row["messages"])
        assert full[: len(prompt)] == prompt, "the chat template renders the prompt differently"
        if len(prompt) >= max_len:
            continue
        labels = [-100] * len(prompt) + full[len(prompt) :]
        kept.append(row)
        examples.append({"input_ids": full[:max_len], "labels": labels[:max_len]})
    return kept, examples


def pad_collate(pad_id: int, counter: dict):
    import torch

    def collate(batch: list[dict]) -> dict:
        width = max(len(example["input_ids"]) for example in batch)
        counter["real"] += sum(len(example["input_ids"]) for example in batch)
        counter["padded"] += width * len(batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, example in enumerate(batch):
            n = len(example["input_ids"])
            ids[i, :n] = torch.tensor(example["input_ids"])
            labels[i, :n] = torch.tensor(example["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def run_plain(model_dir: Path, examples: list[dict], batch_size: int, work: Path, cuda: bool = False,
              recompute: bool = False) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    torch.use_deterministic_algorithms(False)  # the entrypoint, run earlier in this process, turns it on
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["target_modules"],
            task_type="CAUSAL_LM",
        ),
    )
    if recompute:  # the frozen embeddings' output must carry a gradient into the recomputed layers
        model.enable_input_require_grads()
    counter = {"real": 0, "padded": 0}
    args = TrainingArguments(
        output_dir=str(work / "plain-ck"),
        per_device_train_batch_size=batch_size,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=10_000,
        save_total_limit=2,
        report_to=[],
        use_cpu=not cuda,
        bf16=cuda,
        activation_checkpointing=recompute,
        seed=SEED,
        data_seed=SEED,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=pad_collate(tokenizer.pad_token_id, counter),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steps": trainer.state.global_step,
        "padding_share": 1 - counter["real"] / counter["padded"],
    }


def run_entrypoint_in_process(method: str, train, model_dir: Path, data: Path, work: Path, tag: str,
                              init_adapter: Path | None = None) -> dict:
    """``python -m tasks.train.<method>`` on ``train`` (a TrainConfig), run through its ``main`` in this
    process with a fresh run key and checkpoint folder; its ``metrics.json``, plus ``output`` (the adapter)."""
    from tasks.train import dpo, sft

    config = work / f"{tag}-config.json"
    config.write_text(json.dumps({"train": train.model_dump(mode="json"), "run_key": f"bench-{tag}-{time.time_ns()}"}))
    output = work / tag
    argv = ["--config", str(config), "--model-dir", str(model_dir), "--data", str(data),
            "--output-dir", str(output), "--checkpoint-dir", str(work / f"{tag}-checkpoints-{time.time_ns()}")]
    if init_adapter is not None:
        argv += ["--init-adapter", str(init_adapter)]
    code = (sft if method == "sft" else dpo).main(argv)
    assert code == 0, f"{tag}: the {method} entrypoint exited with {code}"
    return {**json.loads((output / "metrics.json").read_text()), "output": output}


def run_distillery(
    model_dir: Path, data: Path, batch_size: int, max_len: int, packing: bool, work: Path, tag: str,
    cuda: bool = False, recompute: bool = False,
) -> dict:
    from tasks.core.recipe import TrainConfig

    train = TrainConfig.model_validate(
        {
            "lora": LORA,
            "seed": SEED,
            "save_steps": 10_000,
            "precision": "bf16" if cuda else "fp32",
            "gradient_checkpointing": recompute,
            "sft": {
                "learning_rate": LEARNING_RATE,
                "batch_size": batch_size,
                "max_seq_len": max_len,
                "packing": packing,
                "epochs": 1,
                "warmup_ratio": 0.1,
                "scheduler": "cosine",
            },
        }
    )
    metrics = run_entrypoint_in_process("sft", train, model_dir, data, work, tag)
    return {
        "seconds": metrics["train_runtime_s"],
        "cpu_seconds": metrics["train_cpu_s"],
        "steps": metrics["global_step"],
        "tokens_counted_by_trainer": metrics["tokens_seen"],
    }


def summarize(runs: dict[str, list[dict]], tokens: int) -> dict[str, dict]:
    """Per arm: mean wall and CPU seconds over its runs, the throughputs they give, every run's value."""
    summary = {}
    for arm, results in runs.items():
        seconds = statistics.mean(r["seconds"] for r in results)
        cpu_seconds = statistics.mean(r["cpu_seconds"] for r in results)
        summary[arm] = {
            **{k: v for k, v in results[0].items() if k not in {"seconds", "cpu_seconds"}},
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "tokens_per_s": tokens / seconds,
            "tokens_per_cpu_s": tokens / cpu_seconds,
            "tokens_per_s_all": [round(tokens / r["seconds"], 2) for r in results],
            "tokens_per_cpu_s_all": [round(tokens / r["cpu_seconds"], 2) for r in results],
        }
    for arm in summary.values():
        arm["speedup_vs_plain"] = arm["tokens_per_s"] / summary["plain"]["tokens_per_s"]
        arm["cpu_speedup_vs_plain"] = arm["tokens_per_cpu_s"] / summary["plain"]["tokens_per_cpu_s"]
    return summary


def save_kit(folder: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(ensure_model(None)).save_pretrained(folder / KIT_TOKENIZER)
    (folder / KIT_ROWS).write_text("".join(json.dumps(row) + "\n" for row in load_rows(10_000)))


def ensure_model(model_dir: Path | None) -> Path:
    if model_dir:
        return model_dir
    from tasks.base.export import converted_gguf
    from tasks.core.models import resolve_gguf

    return converted_gguf(resolve_gguf("smollm2-135m"))  # the machine-wide cache: converted once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6, help="Q&A rows trained on (one epoch).")
    parser.add_argument(
        "--max-seq-len", type=int, default=512, help="The recipe default (train.sft.max_seq_len)."
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for every arm (1 by default: on a shared 2-core machine a second "
        "OpenMP thread mostly spins)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="Runs per arm, in rotating order; times are averaged."
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="A transformers folder of SmolLM2-135M.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: every arm on the GPU in bf16 (weights and compute).")
    parser.add_argument("--random-model", choices=["1b", "tiny"], default=None,
                        help="Train a llama model of this size with random weights (bench/gpu_train.py's) "
                        "instead of SmolLM2-135M.")
    parser.add_argument("--kit", type=Path, default=None,
                        help="A GPU kit folder (make gpu-kit): the conversations and, for --random-model, "
                        "the tokenizer come from it.")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="Every arm recomputes activations in the backward pass (train.gradient_checkpointing): "
                        "large batches in less memory, for more compute.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_throughput.json")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here")
    scratch = tempfile.TemporaryDirectory(prefix="train-bench-")
    work = Path(scratch.name)
    if args.random_model:
        from bench.gpu_train import build_model

        model_dir = work / "model"
        build_model(args.random_model, args.kit / KIT_TOKENIZER if args.kit else ensure_model(None), model_dir)
        model_name = f"llama {args.random_model} (random weights, {'bf16' if cuda else 'fp32'}, LoRA)"
    else:
        model_dir = ensure_model(args.model_dir)
        model_name = f"SmolLM2-135M ({'bf16' if cuda else 'fp32'}, LoRA)"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows, examples = tokenize(load_rows(args.rows, args.kit), tokenizer, args.max_seq_len)
    lengths = sorted(len(e["input_ids"]) for e in examples)
    tokens = sum(lengths)
    load_before = os.getloadavg()

    arms = ["plain", "distillery", "distillery+packing"]
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with scratch:
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        for repeat in range(args.repeats):
            for arm in arms[repeat % 3 :] + arms[: repeat % 3]:
                print(f"[{repeat + 1}/{args.repeats}] {arm} ...", file=sys.stderr, flush=True)
                if arm == "plain":
                    result = run_plain(model_dir, examples, args.batch_size, work, cuda,
                                       args.gradient_checkpointing)
                else:
                    result = run_distillery(
                        model_dir,
                        data,
                        args.batch_size,
                        args.max_seq_len,
                        arm.endswith("packing"),
                        work,
                        f"{arm.replace('+', '-')}-{repeat}",
                        cuda,
                        args.gradient_checkpointing,
                    )
                runs[arm].append(result)
    load_after = os.getloadavg()

    summary = summarize(runs, tokens)

    result = {
        "benchmark": "train_throughput",
        "command": "python bench/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_name,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "load_avg_1m_before": round(load_before[0], 2),
            "load_avg_1m_after": round(load_after[0], 2),
        },
        "versions": versions(),
        "data": {
            "source": str(DUMP.relative_to(REPO)),
            "rows": len(examples),
            "tokens": tokens,
            "min_len": lengths[0],
            "median_len": lengths[len(lengths) // 2],
            "max_len": lengths[-1],
            "truncated_rows": sum(1 for n in lengths if n == args.max_seq_len),
        },
        "config": {
            "max_seq_len": args.max_seq_len,
            "batch_size": args.batch_size,
            "gradient_checkpointing": args.gradient_checkpointing,
            "epochs": 1,
            "lora": LORA,
            "learning_rate": LEARNING_RATE,
            "repeats": args.repeats,
        },
        "arms": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(_table(result))
    print(f"\nwritten to {args.out}")
    return 0


def versions() -> dict:
    """The training stack's package versions (None for one not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _table(result: dict) -> str:
    data, machine, arms = result["data"], result["machine"], result["arms"]
    config = result["config"]
    heading = (
        f"SFT throughput, {result['model']} r={LORA['r']} on {result['device']} ({machine['cpus']} cores, "
        f"{machine['torch_threads']} torch thread(s), load average {machine['load_avg_1m_before']} -> "
        f"{machine['load_avg_1m_after']}): {data['rows']} real Q&A rows, {data['tokens']} tokens "
        f"(length {data['min_len']}/{data['median_len']}/{data['max_len']} min/median/max, "
        f"{data['truncated_rows']} cut at {config['max_seq_len']}), batch {config['batch_size']}, "
        f"{'activations recomputed, ' if config.get('gradient_checkpointing') else ''}"
        f"one epoch, mean of {config['repeats']} run(s) per arm."
    )
    lines = [
        heading,
        "",
        "| arm | steps | wall s | CPU s | tokens/s | vs plain | tokens/CPU-s | vs plain (CPU) | runs (tokens/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, arm in arms.items():
        lines.append(
            f"| {name} | {arm['steps']} | {arm['seconds']:.1f} | {arm['cpu_seconds']:.1f} | "
            f"{arm['tokens_per_s']:.1f} | {arm['speedup_vs_plain']:.2f}x | {arm['tokens_per_cpu_s']:.1f} | "
            f"{arm['cpu_speedup_vs_plain']:.2f}x | {', '.join(map(str, arm['tokens_per_s_all']))} |"
        )
    plain = arms["plain"]
    lines += [
        "",
        f"Padding in the plain arm's batches: {plain['padding_share']:.0%} of the tokens it computed on.",
    ]
    if arms["distillery+packing"]["steps"] < 2:
        lines.append(
            f"Note: {data['rows']} rows fill only {arms['distillery+packing']['steps']} packed step(s); packing "
            "pays off by removing padding, which needs more rows to show (try --rows 16 or more)."
        )
    counted = arms["distillery"].get("tokens_counted_by_trainer")
    if counted is not None and counted != data["tokens"]:
        lines.append(
            f"Note: the entrypoint's Trainer counted {counted} non-padding tokens, this script {data['tokens']}."
        )
    if machine["load_avg_1m_before"] > machine["cpus"] or machine["load_avg_1m_after"] > machine["cpus"]:
        lines.append(
            "Caution: other work was loading this machine's CPUs during the run, so wall-clock numbers are "
            "low and noisy. tokens/CPU-s (this process's CPU time) is far less sensitive to that and is "
            "the fairer ratio here; --repeats 3 steadies both."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
