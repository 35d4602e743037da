"""Run a GGUF through llama.cpp on held-out examples and score it with the recipe's metrics."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tasks.teacher.llama_cpp import json_grammar, load_gguf
from tasks.validate.metrics import json_valid, mean, percentile, rouge_l
from tasks.validate.scoring import task_metrics


def reference_perplexity(llm: Any, prompt_text: str, reference: str) -> float | None:
    """Perplexity of the reference answer given the prompt (lower: the model expects the answer)."""
    import numpy as np

    prompt_ids = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    answer_ids = llm.tokenize(reference.encode(), add_bos=False, special=False)
    ids = (prompt_ids + answer_ids)[: llm.n_ctx()]
    if len(ids) <= len(prompt_ids):
        return None
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    shifted = logits[len(prompt_ids) - 1 : len(ids) - 1]
    targets = ids[len(prompt_ids) :]
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -float(np.mean([log_probs[i, t] for i, t in enumerate(targets)]))
    return math.exp(nll)


def evaluate_gguf(gguf: Path, examples: list[dict[str, Any]], max_tokens: int, repeat_penalty: float,
                  output_format: str = "text", json_schema: dict | None = None, perplexity: bool = True,
                  scorer: str = "text") -> tuple[dict[str, float], list[dict]]:
    """Generate for each held-out example and compute the metrics.

    Decoding is greedy (temperature 0, reproducible scores) with the served model's repeat penalty
    (the Modelfile's), so a model that only stops looping thanks to the penalty is measured as served.

    ``scorer`` adds the recipe's task metrics (:mod:`tasks.validate.scoring`): rating error and
    correlation, profile agreement, persona format.
    """
    # Generation runs with serving settings (no logits kept), so latency is what users will see;
    # perplexity gets its own pass with every logit kept.
    llm = load_gguf(gguf, n_ctx=2048)
    predictions = []
    try:
        for example in examples:
            messages = [dict(m) for m in example["messages"][:-1]]
            kwargs: dict[str, Any] = {"messages": messages, "temperature": 0.0, "max_tokens": max_tokens, "seed": 0,
                                      "repeat_penalty": repeat_penalty}
            if output_format == "json" and json_schema:
                kwargs["grammar"] = json_grammar(json_schema)
            elif output_format == "json":
                kwargs["response_format"] = {"type": "json_object"}
            start = time.perf_counter()
            out = llm.create_chat_completion(**kwargs)
            latency = time.perf_counter() - start
            text = out["choices"][0]["message"]["content"] or ""
            reference = example.get("reference") or example["messages"][-1]["content"]
            row = {"id": example["id"], "prediction": text, "reference": reference, "latency_s": latency,
                   "finish_reason": out["choices"][0]["finish_reason"], "rouge_l": rouge_l(text, reference)}
            if output_format == "json":
                row["json_valid"] = json_valid(text, json_schema)
            predictions.append(row)
    finally:
        llm.close()
    if perplexity:
        logits_llm = load_gguf(gguf, n_ctx=2048, logits_all=True)
        try:
            for example, row in zip(examples, predictions):
                prompt_text = render_chat_prompt(logits_llm, [dict(m) for m in example["messages"][:-1]])
                row["perplexity"] = (reference_perplexity(logits_llm, prompt_text, row["reference"])
                                     if prompt_text else None)
        finally:
            logits_llm.close()
    latencies = [p["latency_s"] for p in predictions]
    metrics = {
        "examples": float(len(predictions)),
        "rouge_l": mean([p["rouge_l"] for p in predictions]),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "stop_rate": mean([1.0 if p["finish_reason"] == "stop" else 0.0 for p in predictions]),
    }
    if perplexity:
        metrics["perplexity"] = mean([p["perplexity"] for p in predictions if p.get("perplexity") is not None])
    if output_format == "json":
        metrics["json_valid"] = mean([1.0 if p["json_valid"] else 0.0 for p in predictions])
    metrics.update(task_metrics(scorer, examples, predictions))
    return metrics, predictions


def render_chat_prompt(llm: Any, messages: list[dict[str, str]]) -> str | None:
    """The prompt text exactly as the GGUF's chat template renders it, generation prompt included."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    eos = llm._model.token_get_text(llm.token_eos())
    bos = llm._model.token_get_text(llm.token_bos())
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    return formatter(messages=messages).prompt
