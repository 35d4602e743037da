"""Prefect task of the package stage.

Inputs: the base model folder and the adapters to merge (in order). Outputs: one GGUF per
quantization (``gguf_<type>``), the ``modelfile``, and ``manifest`` (size and sha256 of every file).
Packaging fails when the training template, the GGUF's template and the Modelfile disagree.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from prefect import task

from tasks.core.caching import stage_cache_key
from tasks.core.recipe import PackageConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.settings import get_settings
from tasks.core.store import get_store
from tasks.package.build import gguf_metadata, merge_adapters, quantize_gguf
from tasks.package.converter import convert_to_gguf
from tasks.package.modelfile import (
    GOLDEN_CONVERSATIONS,
    check_templates,
    modelfile_for,
    render_modelfile_template,
)

SPECIAL_MARKERS = ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|eot_id|>", "<|endoftext|>", "</s>")


def render_jinja(template: str, messages: list[dict], tokenizer) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")


def verify_templates(model_dir: Path, gguf: Path, modelfile_template: str) -> None:
    """Training template vs GGUF template vs Modelfile TEMPLATE, token for token (raises on mismatch)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gguf_template = gguf_metadata(gguf).get("tokenizer.chat_template")
    if not gguf_template:
        raise ValueError(f"{gguf.name} carries no tokenizer.chat_template")
    training, in_gguf, in_modelfile = [], [], []
    for conversation in GOLDEN_CONVERSATIONS:
        training.append(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
        in_gguf.append(render_jinja(gguf_template, conversation, tokenizer))
        system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
        rest = conversation[1:] if system else conversation
        in_modelfile.append(render_modelfile_template(modelfile_template, system, rest))
    check_templates(lambda text: tokenizer.encode(text, add_special_tokens=False),
                    {"training": training, "gguf": in_gguf, "modelfile": in_modelfile})


def smoke_generate(gguf: Path, system: str, stops: list[str], max_tokens: int = 128) -> dict:
    """Golden prompts through llama.cpp: generation must stop at the stop token and no special token
    may leak; how many golden prompts the model itself ends within ``max_tokens`` is recorded.

    The stop check is mechanical, so a weak model cannot pass or fail it by chance: the GGUF's
    end-of-sequence token must be one of the Modelfile's ``stops``, and with that token forced (a
    logit bias) generation must end at once with ``finish_reason == "stop"`` and nothing of the marker
    in the text.
    """
    from tasks.teacher.llama_cpp import load_gguf

    llm = load_gguf(gguf, n_ctx=1024)
    stopped = 0
    try:
        eos = llm.token_eos()
        marker = llm.detokenize([eos], special=True).decode("utf-8", errors="replace")
        if marker not in stops:
            raise ValueError(f"{gguf.name} ends a turn with {marker!r} (token {eos}), which is not among the "
                             f"Modelfile's stop parameters {stops}: Ollama would not stop there")
        messages = [{"role": "system", "content": system}, *GOLDEN_CONVERSATIONS[0][1:]]
        forced = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=8,
                                            logit_bias={eos: 100.0})
        choice = forced["choices"][0]
        if choice["finish_reason"] != "stop" or (choice["message"]["content"] or "").strip():
            raise ValueError(f"{gguf.name}: generation does not stop at {marker!r}: finish_reason "
                             f"{choice['finish_reason']!r}, text {(choice['message']['content'] or '')[:80]!r}")
        for conversation in GOLDEN_CONVERSATIONS:
            messages = [{"role": "system", "content": system}, *conversation[1:]]
            out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens)
            text = out["choices"][0]["message"]["content"] or ""
            leaked = [m for m in SPECIAL_MARKERS if m in text]
            if leaked:
                raise ValueError(f"special tokens {leaked} leak into the output of {gguf.name}: {text[:200]!r}")
            stopped += out["choices"][0]["finish_reason"] == "stop"
    finally:
        llm.close()
    return {"golden_prompts": len(GOLDEN_CONVERSATIONS), "stopped_at_stop_token": stopped, "stop_token": marker}


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def package_model(base_model: ArtifactRef, adapters: list[ArtifactRef], config: PackageConfig,
                  system_prompt: str) -> StageOutput:
    """Merge -> GGUF (llama.cpp's converter) -> quantize -> Modelfile, with template checks."""
    from transformers import AutoTokenizer

    settings = get_settings()
    store = get_store()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        work = Path(tmp)
        merged = merge_adapters(store.local_path(base_model), [store.local_path(a) for a in adapters],
                                work / "merged")
        f16 = convert_to_gguf(merged, work / "model-f16.gguf", settings.llama_cpp_converter_dir, "f16")
        files: dict[str, Path] = {}
        for kind in config.quantizations:
            files[kind] = f16 if kind == "f16" else quantize_gguf(f16, work / f"model-{kind}.gguf", kind)
        chat_template = AutoTokenizer.from_pretrained(merged).chat_template
        serve_name = f"model-{config.serve}.gguf"
        spec = modelfile_for(chat_template, serve_name, system_prompt, config.temperature, config.num_ctx,
                             config.num_predict, config.repeat_penalty)
        verify_templates(merged, files[config.serve], spec.template)
        smoke = smoke_generate(files[config.serve], system_prompt, spec.stops)
        modelfile = work / "Modelfile"
        modelfile.write_text(spec.render())
        refs = {f"gguf_{kind}": store.put_file(path, kind="gguf", name=path.name) for kind, path in files.items()}
        refs["modelfile"] = store.put_file(modelfile, kind="modelfile")
        manifest = {name: {"file": ref.name, "sha256": ref.sha256, "bytes": ref.bytes} for name, ref in refs.items()}
        refs["manifest"] = store.put_json(manifest, "package-manifest.json", kind="manifest")
        shutil.rmtree(merged, ignore_errors=True)
    sizes = {f"{name}_mb": round(ref.bytes / 2**20, 1) for name, ref in refs.items() if name.startswith("gguf_")}
    return StageOutput(artifacts=refs, counts={**sizes, **smoke, "serve": config.serve})
