"""Prefect task: built-in name / GGUF / folder -> the base model folder in the store (kind ``model``) and
its tokenizer alone (kind ``tokenizer``: what curate needs, without downloading the weights from S3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task

from tasks.core.caching import stage_cache_key
from tasks.core.refs import StageOutput
from tasks.core.settings import get_settings
from tasks.core.store import get_store


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def prepare_base_model(base_model: str, trust_remote_code: bool = False) -> StageOutput:
    """The student's base model as a transformers folder in the store, and its tokenizer as another."""
    from tasks.base.export import export_base_model, export_tokenizer

    scratch = get_settings().work_dir
    scratch.mkdir(parents=True, exist_ok=True)
    store = get_store()
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        folder = export_base_model(base_model, Path(tmp) / "base-model", trust_remote_code)
        ref = store.put_dir(folder, kind="model", name="base-model")
        tokenizer = store.put_dir(export_tokenizer(folder, Path(tmp) / "tokenizer"), kind="tokenizer")
    return StageOutput(artifacts={"model": ref, "tokenizer": tokenizer}, counts={"bytes": ref.bytes})
