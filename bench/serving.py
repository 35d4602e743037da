"""Serving speed of the quantized student against its f16 GGUF, through llama.cpp.

    python bench/serving.py [--out bench/results/serving.json] [--prompts 16] [--max-tokens 128]

The student's base model (the default recipe's, SmolLM2-135M) goes through the package stage's own
functions: exported as a transformers folder, converted to an f16 GGUF by llama.cpp's converter, then
quantized by llama.cpp (q8_0, the type the default recipe serves, and q4_k_m). Each GGUF is loaded
with llama-cpp-python as the validate stage loads it (n_ctx 2048, all cores) and answers the same
real Stack Exchange questions (data/sample, ai.stackexchange.com) through its chat template,
greedy, up to ``--max-tokens`` tokens each, after one warm-up request.

Reported per type: file size and its ratio to f16, generation rate (completion tokens over the
requests' wall time, prompt processing included, all requests together), p50/p95 request latency,
and the tokens generated (greedy decoding of different weights can stop at different lengths, which
is why the rate, not the latency alone, is compared). A trained student has the same architecture and size as its base, so its
speed is the base's; the weights differ only in value.

Prints a Markdown table and writes the numbers as JSON.
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

from tasks.base.export import converted_gguf
from tasks.collect.stackexchange import parse_posts_xml
from tasks.core.models import resolve_gguf
from tasks.core.settings import get_settings
from tasks.package.build import quantize_gguf
from tasks.package.converter import convert_to_gguf, ensure_converter
from tasks.validate.metrics import percentile

QUESTIONS = REPO / "data" / "sample" / "stackexchange" / "ai.stackexchange.com" / "Posts.xml"
TYPES = ("f16", "q8_0", "q4_k_m")


def prompts(count: int) -> list[list[dict[str, str]]]:
    """The first ``count`` real questions as chat conversations (system + user), bodies cut to 600 chars."""
    pairs, _ = parse_posts_xml(QUESTIONS, "ai.stackexchange.com", limit=count)
    if len(pairs) < count:
        raise SystemExit(f"{QUESTIONS} has only {len(pairs)} questions with accepted answers")
    system = "You are a careful machine learning expert. Answer clearly and concisely."
    return [[{"role": "system", "content": system},
             {"role": "user", "content": f"{pair.title}\n\n{pair.question[:600]}"}] for pair in pairs]


def build_ggufs(folder: Path) -> dict[str, Path]:
    """f16, q8_0 and q4_k_m GGUFs of the default base model, made as the package stage makes them."""
    base = converted_gguf(resolve_gguf("smollm2-135m"))  # the machine-wide cache: converted once
    f16 = convert_to_gguf(base, folder / "model-f16.gguf", ensure_converter(get_settings().llama_cpp_converter_dir))
    out = {"f16": f16}
    for kind in TYPES[1:]:
        out[kind] = quantize_gguf(f16, folder / f"model-{kind}.gguf", kind)
    return out


def measure(gguf: Path, conversations: list[list[dict[str, str]]], max_tokens: int, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False, seed=0)
    try:
        llm.create_chat_completion(messages=conversations[0], temperature=0.0, max_tokens=8, seed=0)  # warm-up
        latencies, completion_tokens, prompt_tokens = [], [], []
        for messages in conversations:
            start = time.perf_counter()
            out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens, seed=0)
            latencies.append(time.perf_counter() - start)
            completion_tokens.append(out["usage"]["completion_tokens"])
            prompt_tokens.append(out["usage"]["prompt_tokens"])
    finally:
        llm.close()
    return {
        "size_mb": round(gguf.stat().st_size / 2**20, 1),
        "requests": len(latencies),
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1),
        "completion_tokens": sum(completion_tokens),
        "tokens_per_s": round(sum(completion_tokens) / sum(latencies), 1),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    conversations = prompts(args.prompts)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="distillery-bench-serving-") as tmp:
        ggufs = build_ggufs(Path(tmp))
        arms = {kind: measure(path, conversations, args.max_tokens, args.threads) for kind, path in ggufs.items()}
    f16 = arms["f16"]
    for arm in arms.values():
        arm["size_vs_f16"] = round(arm["size_mb"] / f16["size_mb"], 3)
        arm["speed_vs_f16"] = round(arm["tokens_per_s"] / f16["tokens_per_s"], 2)
    result = {
        "benchmark": "serving", "model": "smollm2-135m (the default student's base)",
        "command": "python bench/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "prompts": args.prompts, "max_tokens": args.max_tokens, "threads": args.threads,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "arms": arms,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| GGUF | size MB | size vs f16 | tokens/s | vs f16 | p50 latency s | p95 latency s | completion tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, arm in arms.items():
        print(f"| {kind} | {arm['size_mb']} | {arm['size_vs_f16']} | {arm['tokens_per_s']} | {arm['speed_vs_f16']}x "
              f"| {arm['latency_p50_s']} | {arm['latency_p95_s']} | {arm['completion_tokens']} |")
    print(f"\n{args.prompts} real questions, up to {args.max_tokens} tokens each, {args.threads} threads; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
