"""Merge, convert and quantize: plain functions around peft, llama.cpp's converter and quantizer."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

logger = logging.getLogger("distillery.package")

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
    """Quantize a GGUF with llama.cpp (``llama_model_quantize``) to ``kind`` (q4_k_m, q8_0, f16...).

    llama.cpp's log lines during the call are collected, not printed: it writes two lines for every
    tensor whose rows do not fit the type's blocks (360 on the 135M model, whose 576-wide rows are not
    a multiple of 256), and inside a flow every printed line becomes a Prefect log record. One line
    says how many tensors fell back; a failure carries llama.cpp's reason.
    """
    import llama_cpp

    if kind not in FTYPES:
        raise ValueError(f"unknown quantization {kind!r}; known: {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    finally:
        # llama-cpp-python's own callback again (it prints what Llama(verbose=...) lets through)
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    log = "".join(lines).splitlines()
    if code != 0 or not target.exists():
        target.unlink(missing_ok=True)  # what a failed quantization wrote is not a model
        failures = [line.strip() for line in log if "fail" in line or "error" in line.lower()]
        tail = "\n".join(failures[-3:] or [line for line in log[-8:] if line.strip()])
        raise RuntimeError(f"llama_model_quantize to {kind} failed with code {code}:\n{tail}")
    for line in log:
        if "fallback quantization" in line:  # "WARNING: 180 of 272 tensor(s) required fallback quantization"
            logger.warning("%s: %s", kind, line.split("WARNING:")[-1].strip())
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
