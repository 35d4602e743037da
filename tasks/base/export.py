"""The student's base model as a transformers folder (safetensors + tokenizer + chat template).

A built-in name or a ``.gguf`` file is dequantized once with transformers' GGUF loader and saved as
safetensors; a local transformers folder is used as it is. Training, merging and token counting all
read this one folder, so they agree on weights and on the chat template.
"""

from __future__ import annotations

from pathlib import Path


def export_base_model(name_or_path: str, out_dir: Path, trust_remote_code: bool = False) -> Path:
    """Write the base model named by ``name_or_path`` as a transformers folder at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.core.models import BUILTIN_GGUF, resolve_gguf

    source = Path(name_or_path).expanduser()
    if source.is_dir():
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    elif name_or_path in BUILTIN_GGUF or source.suffix == ".gguf":
        gguf = resolve_gguf(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to save a model it loaded from GGUF until the quantizer marker is gone;
        # the weights are already dequantized to float32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    elif "/" in name_or_path and not source.exists():
        # A hub id (org/name): needs a reachable hub (set HF_HUB_OFFLINE=0), e.g. on a GPU box or SageMaker.
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    else:
        raise FileNotFoundError(f"base model {name_or_path!r} is not a built-in name, a .gguf file, a folder "
                                "or a hub id")
    if tokenizer.chat_template is None:
        raise ValueError(f"base model {name_or_path!r} has no chat template; distillery trains chat models")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
