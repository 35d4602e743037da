"""Generation speed of the local models by llama.cpp thread count.

    python bench/local_threads.py [--models qwen2.5-coder-1.5b smollm2-135m] [--threads 1 2]
                                  [--prompts 6] [--max-tokens 96] [--out bench/results/local_threads.json]

Each built-in model is loaded the way the teacher and validate stages load it (``load_gguf``, n_ctx
2048) once per thread count and asked the same real seed instructions (data/sample/instructions),
greedy, after one warm-up request. Reported: tokens generated per second of wall time (prompt and
generation together, what a stage waits for) and the speed-up over one thread. The default thread
count (``llama_threads``, the physical cores) is printed beside it; llama-cpp-python's own default
is half the logical CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.core.jsonl import read_jsonl
from tasks.core.models import resolve_gguf
from tasks.core.settings import get_settings
from tasks.teacher.llama_cpp import load_gguf

INSTRUCTIONS = REPO / "data" / "sample" / "instructions" / "seed_instructions.jsonl"


def measure(gguf: Path, prompts: list[str], max_tokens: int, threads: int) -> dict:
    llm = load_gguf(gguf, n_ctx=2048, n_threads=threads)
    try:
        ask = [{"role": "user", "content": "Say hello."}]
        llm.create_chat_completion(messages=ask, max_tokens=8, temperature=0.0)
        tokens, start = 0, time.perf_counter()
        for prompt in prompts:
            out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                             temperature=0.0, seed=0)
            tokens += out["usage"]["completion_tokens"]
        wall = time.perf_counter() - start
    finally:
        llm.close()
    return {"threads": threads, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-1.5b", "smollm2-135m"])
    parser.add_argument("--threads", nargs="+", type=int, default=sorted({1, get_settings().generation_threads}))
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "local_threads.json")
    args = parser.parse_args()

    prompts = [row["prompt"] for row in read_jsonl(INSTRUCTIONS)][: args.prompts]
    results = {}
    for model in args.models:
        arms = [measure(resolve_gguf(model), prompts, args.max_tokens, n) for n in args.threads]
        for arm in arms:
            arm["speedup"] = round(arm["tokens_per_s"] / arms[0]["tokens_per_s"], 2)
        results[model] = arms
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "default_threads": get_settings().generation_threads},
              "prompts": len(prompts), "max_tokens": args.max_tokens, "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(prompts)} seed instructions, up to {args.max_tokens} tokens each; default threads: "
          f"{get_settings().generation_threads}\n")
    print("| model | threads | tokens | wall s | tokens/s | speed-up |\n|---|---|---|---|---|---|")
    for model, arms in results.items():
        for arm in arms:
            print(f"| {model} | {arm['threads']} | {arm['tokens']} | {arm['wall_s']} | {arm['tokens_per_s']} | "
                  f"{arm['speedup']}x |")


if __name__ == "__main__":
    main()
