"""The student's base model as a transformers folder (safetensors + tokenizer + chat template).

A built-in name or a ``.gguf`` file is dequantized with transformers' GGUF loader and saved as
safetensors, once per machine: the result lands in a cache shared by every state folder
(:attr:`Settings.model_cache_dir`), keyed by the file's sha256 and the transformers release, since
converting takes ~50 s on 2 cores (transformers parses the GGUF's metadata three times). A local
transformers folder is used as it is. Training, merging and token counting all read this one folder,
so they agree on weights and on the chat template.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger("distillery")


def export_base_model(name_or_path: str, out_dir: Path, trust_remote_code: bool = False) -> Path:
    """The base model named by ``name_or_path`` as a transformers folder, read-only: for a built-in name
    or a ``.gguf`` file the machine-wide cache's entry (nothing is written at ``out_dir``), otherwise the
    model saved at ``out_dir``."""
    from tasks.core.models import BUILTIN_GGUF, resolve_gguf

    source = Path(name_or_path).expanduser()
    if not source.is_dir() and (name_or_path in BUILTIN_GGUF or source.suffix == ".gguf"):
        return converted_gguf(resolve_gguf(name_or_path))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_dir():
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    elif "/" in name_or_path and not source.exists():
        # A hub id (org/name): needs a reachable hub (set HF_HUB_OFFLINE=0), e.g. on a GPU box or SageMaker.
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    else:
        raise FileNotFoundError(f"base model {name_or_path!r} is not a built-in name, a .gguf file, a folder "
                                "or a hub id")
    _save(model, tokenizer, name_or_path, out_dir)
    return out_dir


def export_tokenizer(model_dir: Path, out_dir: Path) -> Path:
    """The tokenizer (and chat template) of the transformers folder ``model_dir``, alone, at ``out_dir``."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


def converted_gguf(gguf: Path) -> Path:
    """The transformers folder dequantized from ``gguf``, from the machine-wide cache (converted on a miss).

    The folder appears by an atomic rename of a finished conversion, so a crash mid-way or a second
    process converting the same file at the same time never leaves a half-written entry behind.
    """
    entry = cache_entry(gguf)
    root = entry.parent
    if (entry / "config.json").exists():
        return entry
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a transformers folder (once per machine) in %s", gguf.name, root)
    with tempfile.TemporaryDirectory(dir=root, prefix=".converting-") as tmp:
        _convert_gguf(gguf, Path(tmp) / "model")
        try:
            (Path(tmp) / "model").rename(entry)
        except OSError:
            if not (entry / "config.json").exists():  # not another process's finished copy: a real error
                raise
    return entry


def cache_entry(gguf: Path) -> Path:
    """Where :func:`converted_gguf` keeps ``gguf``'s conversion: named by its sha256 and the transformers release."""
    import transformers

    from tasks.core.hashing import sha256_file_cached
    from tasks.core.settings import get_settings

    name = f"{gguf.stem}-{sha256_file_cached(gguf)[:16]}-transformers-{transformers.__version__}"
    return get_settings().model_cache_dir / name


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a model it loaded from GGUF until the quantizer marker is gone;
    # the weights are already dequantized to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save(model, tokenizer, str(gguf), out_dir)


def _save(model, tokenizer, name: str, out_dir: Path) -> None:
    if tokenizer.chat_template is None:
        raise ValueError(f"base model {name!r} has no chat template; distillery trains chat models")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
