"""Variants: one model per value of the examples' ``metadata.variant`` (paper-explainer: the personas).

A recipe with ``variants`` fans out after synthesize: each variant gets its own examples
(:func:`select_variant_examples`) and its own recipe (:func:`variant_recipe`), and curate, pairs,
train, package, validate and deploy run once per variant with it, unchanged. Curate runs per variant
too, not only train onwards: every persona's example of a passage has the same prompt, so one shared
curate would let the leakage guard drop a passage from every persona's training set as soon as one
persona's example of it is held out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from tasks.core.caching import stage_cache_key
from tasks.core.jsonl import read_jsonl, write_jsonl
from tasks.core.recipe import Recipe
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.store import get_store


def variant_of(example: dict[str, Any]) -> str | None:
    return (example.get("metadata") or {}).get("variant")


def select_variant(examples: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """The examples of one variant, in their order."""
    return [e for e in examples if variant_of(e) == variant]


def variant_counts(examples: list[dict[str, Any]]) -> dict[str, int]:
    """Examples per variant (``none`` for examples without one)."""
    counts: dict[str, int] = {}
    for example in examples:
        key = variant_of(example) or "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def variant_system_prompt(recipe: Recipe, variant: str) -> str:
    """The system prompt the variant's model is trained and served with."""
    if recipe.synthesize.generator == "personas":
        from tasks.synthesize.personas import persona

        return persona(variant).system_prompt
    return recipe.synthesize.system_prompt


def variant_recipe(recipe: Recipe, variant: str) -> Recipe:
    """The recipe one variant's model is built with.

    Named ``<name>-<variant>`` (its frozen held-out set, ``latest`` pointer and reports are its own),
    served as ``<deploy.model_name>-<variant>`` with the variant's system prompt, and with no
    variants of its own.
    """
    if variant not in recipe.variants:
        raise ValueError(f"recipe {recipe.name} has no variant {variant!r}; variants: {recipe.variants}")
    return recipe.model_copy(update={
        "name": f"{recipe.name}-{variant}",
        "variants": [],
        "synthesize": recipe.synthesize.model_copy(update={"system_prompt": variant_system_prompt(recipe, variant)}),
        "deploy": recipe.deploy.model_copy(update={"model_name": f"{recipe.deploy.model_name}-{variant}"}),
    })


def variant_recipes(recipe: Recipe) -> dict[str, Recipe]:
    """Variant name -> its recipe; ``{"": recipe}`` for a recipe without variants (one model)."""
    if not recipe.variants:
        return {"": recipe}
    return {variant: variant_recipe(recipe, variant) for variant in recipe.variants}


def variant_output(variant: str) -> str:
    """The synthesize stage's output name holding one variant's examples."""
    return f"examples.{variant}" if variant else "examples"


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def select_variant_examples(examples: ArtifactRef, variant: str) -> StageOutput:
    """Synthesized examples -> the examples of one variant (``examples``), for that variant's curate."""
    store = get_store()
    rows = read_jsonl(store.local_path(examples))
    chosen = select_variant(rows, variant)
    if not chosen:
        raise ValueError(f"no synthesized example has metadata.variant={variant!r} "
                         f"(examples per variant: {variant_counts(rows)})")
    with tempfile.TemporaryDirectory() as tmp:
        n = write_jsonl(Path(tmp) / "examples.jsonl", chosen)
        ref = store.put_file(Path(tmp) / "examples.jsonl", kind="dataset", rows=n)
    return StageOutput(artifacts={"examples": ref}, counts={"variant": variant, "examples": n})
