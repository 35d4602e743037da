"""Generation throughput of the local models when several sequences are decoded together.

    python bench/batched_decode.py [--models qwen2.5-coder-1.5b smollm2-135m] [--batch 1 2 4 8]
                                   [--max-tokens 64] [--out bench/results/batched_decode.json]

Every local stage (synthesize, the pairs loop, the judge, validation) asks llama.cpp for one answer at a
time, and one sequence's decoding reads every weight once per token. This measures what the stages would
gain by decoding B answers at once: B real seed instructions (data/sample/instructions) in the model's
chat template go into one llama.cpp context with B sequences, each prompt is evaluated, then every step
decodes one token for each unfinished sequence in one batch (greedy). Reported per batch size: generated
tokens per second of wall time (prompt evaluation included) and the gain over B = 1, the decode steps'
rate alone, and the prompts' (a ceiling: a prompt is evaluated as one batch, so its rate is what the
machine's arithmetic allows when weights are read once for many tokens). Threads: the
``llama_threads`` setting (the physical cores), as the stages use.

It uses llama-cpp-python's low-level API (``llama_decode`` with a multi-sequence ``llama_batch``): the
high-level ``Llama`` decodes one sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.core.jsonl import read_jsonl
from tasks.core.models import resolve_gguf
from tasks.core.settings import get_settings
from tasks.teacher.llama_cpp import load_gguf
from tasks.validate.evaluate import render_chat_prompt

INSTRUCTIONS = REPO / "data" / "sample" / "instructions" / "seed_instructions.jsonl"
CONTEXT_PER_SEQUENCE = 512


def chat_prompt(llm, instruction: str) -> list[int]:
    """The instruction in the model's own chat template, tokenized (the template the stages use)."""
    text = render_chat_prompt(llm, [{"role": "user", "content": instruction}])
    return llm.tokenize(text.encode(), add_bos=False, special=True)


def measure(gguf: Path, instructions: list[str], batch: int, max_tokens: int, threads: int) -> dict:
    import llama_cpp

    llm = load_gguf(gguf, n_ctx=CONTEXT_PER_SEQUENCE, n_threads=threads)
    try:
        # A second context with room for `batch` sequences (Llama's own is made for one), their KV cache
        # in one buffer.
        params = llm.context_params
        params.n_ctx, params.n_seq_max, params.kv_unified = batch * CONTEXT_PER_SEQUENCE, batch, True
        ctx = llama_cpp.llama_init_from_model(llm.model, params)
        n_vocab = llm.n_vocab()
        eog = {t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), t)}
        prompts = [chat_prompt(llm, text) for text in instructions[:batch]]
        lbatch = llama_cpp.llama_batch_init(512 * batch, 0, batch)
        memory = llama_cpp.llama_get_memory(ctx)

        def decode(entries: list[tuple[int, int, int, bool]]) -> None:
            lbatch.n_tokens = len(entries)
            for i, (token, pos, seq, logits) in enumerate(entries):
                lbatch.token[i], lbatch.pos[i], lbatch.n_seq_id[i] = token, pos, 1
                lbatch.seq_id[i][0], lbatch.logits[i] = seq, logits
            if llama_cpp.llama_decode(ctx, lbatch) != 0:
                raise RuntimeError("llama_decode failed")

        def argmax(index: int) -> int:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
            return int(np.argmax(logits))

        llama_cpp.llama_memory_clear(memory, True)
        start = time.perf_counter()
        # Prompts: one decode per sequence (a prompt is up to a few hundred tokens; n_batch is 512).
        nexts, positions = [], []
        for seq, tokens in enumerate(prompts):
            decode([(t, p, seq, p == len(tokens) - 1) for p, t in enumerate(tokens)])
            nexts.append(argmax(len(tokens) - 1))
            positions.append(len(tokens))
        prompt_s = time.perf_counter() - start
        generated = [1] * batch
        live = [nexts[s] not in eog for s in range(batch)]
        while any(live):
            seqs = [s for s in range(batch) if live[s]]
            decode([(nexts[s], positions[s], s, True) for s in seqs])
            for i, s in enumerate(seqs):
                positions[s] += 1
                nexts[s] = argmax(i)
                generated[s] += 1
                live[s] = nexts[s] not in eog and generated[s] < max_tokens
        wall = time.perf_counter() - start
        llama_cpp.llama_batch_free(lbatch)
        llama_cpp.llama_free(ctx)
    finally:
        llm.close()
    tokens, prompt_tokens = sum(generated), sum(map(len, prompts))
    # The first token of each sequence comes from its prompt's evaluation; the rest from the decode steps.
    return {"batch": batch, "prompt_tokens": prompt_tokens, "tokens": tokens, "prompt_s": round(prompt_s, 2),
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2),
            "prompt_tokens_per_s": round(prompt_tokens / prompt_s, 1),
            "decode_tokens_per_s": round((tokens - batch) / (wall - prompt_s), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-1.5b", "smollm2-135m"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "batched_decode.json")
    args = parser.parse_args()

    threads = get_settings().generation_threads
    instructions = [row["prompt"] for row in read_jsonl(INSTRUCTIONS)][: max(args.batch)]
    results: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "threads": threads,
                                 "processor": platform.processor() or platform.machine()},
                     "max_tokens": args.max_tokens, "models": {}}
    for name in args.models:
        rows = [measure(resolve_gguf(name), instructions, b, args.max_tokens, threads) for b in args.batch]
        single = rows[0]["tokens_per_s"]
        for row in rows:
            row["gain"] = round(row["tokens_per_s"] / single, 2)
            print(f"{name:22s} batch {row['batch']:2d}: {row['tokens_per_s']:7.2f} tokens/s x{row['gain']} "
                  f"(decode {row['decode_tokens_per_s']}/s, prompts {row['prompt_tokens_per_s']}/s; "
                  f"{row['tokens']} tokens in {row['wall_s']} s)")
        results["models"][name] = rows
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
