"""Merge, convert and quantize: plain functions around peft, llama.cpp's converter and quantizer."""

from __future__ import annotations

import logging
from pathlib import Path

# llama.cpp file types (llama.h: enum llama_ftype) by the names recipes use.
FTYPES = {"f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17}


def merge_adapters(base_dir: Path, adapters: list[Path], out_dir: Path) -> Path:
    """Apply each LoRA adapter in order and merge it into the weights; save a transformers folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def quantize_gguf(source: Path, target: Path, kind: str) -> Path:
    """Quantize a GGUF with llama.cpp (``llama_model_quantize``) to ``kind`` (q4_k_m, q8_0, f16...)."""
    import llama_cpp

    if kind not in FTYPES:
        raise ValueError(f"unknown quantization {kind!r}; known: {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    # llama.cpp warns once per tensor whose rows do not fit the type's block (2 lines each: 360 on the
    # 135M model, whose 576-wide rows are not a multiple of 256), and inside a flow every printed line
    # becomes a Prefect log record; errors still print.
    llama_logger = logging.getLogger("llama-cpp-python")
    level = llama_logger.level
    llama_logger.setLevel(logging.ERROR)
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    finally:
        llama_logger.setLevel(level)
    if code != 0 or not target.exists():
        raise RuntimeError(f"llama_model_quantize to {kind} failed with code {code}")
    return target


def gguf_metadata(path: Path) -> dict[str, str]:
    """Metadata of a GGUF (chat template, architecture, name...) as llama.cpp reads it, values as strings.

    Read by llama.cpp's loader with the vocabulary only, no context: 0.2 s, where gguf-py's reader
    takes ~6 s on the 135M model (it parses the 49k-token vocabulary arrays in Python).
    """
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        return model.metadata()
    finally:
        model.close()
