"""Prefect tasks of the curate stage.

Inputs: synthesized examples and the base model's tokenizer folder (token counts, chat template).
Outputs: ``train`` and ``heldout`` SyntheticExample JSONLs, ``rejected`` with reasons.
The held-out set is frozen per recipe: an id once held out stays held out (``state/heldout/<recipe>``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import task

from tasks.core.caching import stage_cache_key
from tasks.core.jsonl import read_jsonl, write_jsonl
from tasks.core.recipe import CurateConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.store import PointerConflict, get_store
from tasks.curate.curate import curate
from tasks.synthesize.records import SyntheticExample


def _heldout_key(recipe_name: str) -> str:
    return f"state/heldout/{recipe_name}.json"


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def curate_dataset(examples: ArtifactRef, tokenizer: ArtifactRef, config: CurateConfig,
                   recipe_name: str) -> StageOutput:
    """Examples -> train / held-out splits, with every drop counted and explained."""
    from transformers import AutoTokenizer

    store = get_store()
    rows = [SyntheticExample.model_validate(r) for r in read_jsonl(store.local_path(examples))]
    key = _heldout_key(recipe_name)
    previous = store.read_key(key)
    frozen = set(json.loads(previous)["ids"]) if previous else set()
    result = curate(rows, AutoTokenizer.from_pretrained(store.local_path(tokenizer)), config, frozen)

    grown = sorted(frozen | {e.id for e in result.heldout})
    if grown != sorted(frozen):
        try:
            store.write_pointer(key, json.dumps({"ids": grown}, indent=1).encode(), previous)
        except PointerConflict:
            pass  # another run grew it at the same time; ours is recomputed next run
    with tempfile.TemporaryDirectory() as tmp:
        refs = {}
        for name, rows_out, kind in (("train", result.train, "dataset"), ("heldout", result.heldout, "dataset"),
                                     ("rejected", result.rejected, "rejected")):
            path = Path(tmp) / f"{name}.jsonl"
            n = write_jsonl(path, rows_out)
            refs[name] = store.put_file(path, kind=kind, rows=n)
    return StageOutput(artifacts=refs, counts=result.counts)
