"""What the local teacher's canonical prefix (``CanonicalPrefix``) costs and saves.

    python bench/prefix_reuse.py [--model qwen2.5-coder-1.5b] [--instructions 8]
                                 [--out bench/results/prefix_reuse.json]

1. Prompt evaluation speed by chunk size: one prompt of 384 real tokens (seed instructions) evaluated
   from an empty context in chunks of 384 (one batch), 128, 64 (what ``CanonicalPrefix`` uses) and 32
   tokens, twice each in rotating order; prompt tokens per second.
2. Judge readings as validation makes them: for each of ``--instructions`` real seed instructions
   (data/sample/instructions, chosen as synthesize chooses them), two answers graded back to back (``tasks.validate.judge.grade``: one
   token, its log-probabilities). ``whole prompt``: the context is reset before each reading (what
   LlamaCppChat did before session 16); ``canonical prefix``: the second reading keeps the system turn
   and the instruction's whole chunks. Reported: seconds per reading, prompt tokens evaluated, and
   whether every reading is bit-identical to the ``whole prompt`` arm's (evaluated in the same chunks
   from an empty context). Prints Markdown tables and writes JSON.
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
from tasks.synthesize.instructions import instruction_prompt, select_instructions
from tasks.teacher.llama_cpp import PREFIX_CHUNK, LlamaCppChat
from tasks.validate.judge import grade

INSTRUCTIONS = REPO / "data" / "sample" / "instructions" / "seed_instructions.jsonl"
# Two answers to every instruction: one on topic, one not; what they say matters less than their length.
ANSWERS = (("The short answer is that it depends on the data: start from the simplest method that fits, check "
            "its assumptions on a held-out sample, and report the uncertainty of every estimate."),
           "I am not sure.")


def chunk_speed(chat: LlamaCppChat, tokens: list[int], sizes: list[int], repeats: int = 2) -> dict[int, float]:
    """Prompt tokens per second of evaluating ``tokens`` from an empty context in chunks of each size."""
    llm, evaluate = chat._llm, chat._prefix._eval  # llama-cpp-python's own eval, without the wrapper
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for repeat in range(repeats):
        for size in sizes[repeat % len(sizes):] + sizes[: repeat % len(sizes)]:
            llm.reset()
            start = time.perf_counter()
            for i in range(0, len(tokens), size):
                evaluate(tokens[i:i + size])
            times[size].append(time.perf_counter() - start)
    return {size: round(len(tokens) / (sum(t) / len(t)), 1) for size, t in times.items()}


def readings(chat: LlamaCppChat, instructions: list[str], whole_prompt: bool) -> tuple[list[float], float, int]:
    """Both answers' grades for every instruction, seconds per reading, prompt tokens evaluated."""
    prefix = chat._prefix
    evaluated, values = prefix.evaluated, []
    start = time.perf_counter()
    for instruction in instructions:
        for answer in ANSWERS:
            if whole_prompt:
                chat._llm.reset()
            values.append(grade(chat, instruction, answer)[0])
    seconds = (time.perf_counter() - start) / len(values)
    return values, round(seconds, 2), prefix.evaluated - evaluated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--instructions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prefix_reuse.json")
    args = parser.parse_args()

    rows = read_jsonl(INSTRUCTIONS)
    # The instructions synthesize would pick (every type in turn), as the judge sees them.
    instructions = [instruction_prompt(row) for row in select_instructions(rows, args.instructions)]

    chat = LlamaCppChat(resolve_gguf(args.model))
    try:
        grade(chat, "Say hello.", "Hello.")  # loads the model; a warm-up
        text = "\n\n".join(row["prompt"] for row in rows)
        tokens = chat._llm.tokenize(text.encode())[:384]
        speed = chunk_speed(chat, tokens, [384, 128, PREFIX_CHUNK, 32])
        whole, whole_s, whole_tokens = readings(chat, instructions, whole_prompt=True)
        kept, kept_s, kept_tokens = readings(chat, instructions, whole_prompt=False)
    finally:
        chat.close()

    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": get_settings().generation_threads},
        "model": args.model, "chunk": PREFIX_CHUNK,
        "prompt_tokens_per_s_by_chunk": speed,
        "readings": len(whole),
        "whole_prompt": {"s_per_reading": whole_s, "prompt_tokens_evaluated": whole_tokens},
        "canonical_prefix": {"s_per_reading": kept_s, "prompt_tokens_evaluated": kept_tokens},
        "identical_readings": whole == kept,
        "max_reading_difference": max(abs(a - b) for a, b in zip(whole, kept)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.model}, {report['machine']['threads']} threads\n")
    print("| chunk (tokens) | prompt tokens/s |\n|---|---|")
    for size, rate in speed.items():
        print(f"| {size} | {rate} |")
    print(f"\n{len(whole)} judge readings ({len(instructions)} instructions x 2 answers, back to back)\n")
    print("| arm | s per reading | prompt tokens evaluated |\n|---|---|---|")
    print(f"| whole prompt | {whole_s} | {whole_tokens} |")
    print(f"| canonical prefix | {kept_s} | {kept_tokens} |")
    print(f"\nreadings bit-identical: {report['identical_readings']} "
          f"(largest difference {report['max_reading_difference']})")


if __name__ == "__main__":
    main()
