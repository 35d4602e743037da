"""Stage flows under prefect_test_harness: caching by content, and a corrupted artifact is rebuilt."""

from __future__ import annotations

import pytest

from tasks.core.recipe import load_recipe
from tasks.core.store import get_store

pytestmark = pytest.mark.integration

RECIPE = ["synthesize.max_items=1", "teacher.max_tokens=64", "synthesize.source_chars=400",
          "collect.sources.1.limit=5"]


def test_collect_and_synthesize_cache_and_rebuild(prefect_harness):
    from flows.collect import collect_flow
    from flows.synthesize import synthesize_flow

    recipe = load_recipe("stats-qa", RECIPE)
    first = collect_flow(recipe)
    assert first.status == "completed"
    counts = {name: out.counts for name, out in first.outputs.items()}
    assert counts["0-stackexchange_dump"]["collected"] > 0
    assert counts["2-arxiv_pdfs"]["collected"] > 0

    synthesized = synthesize_flow(recipe, first.outputs)
    assert synthesized.status == "completed"
    examples = synthesized.output("examples")
    assert examples.counts["examples"] > 0
    assert synthesized.teacher_calls == examples.counts["requests"] >= 1

    # Unchanged inputs: both stages come from the cache and the teacher is not called.
    again = collect_flow(recipe)
    assert again.status == "cached"
    cached = synthesize_flow(recipe, again.outputs)
    assert cached.status == "cached"
    assert cached.output("examples")["examples"] == examples["examples"]

    # A corrupted artifact is never passed on: the task runs again and rebuilds the same bytes
    # (the teacher's durable cache answers, so no new teacher request is paid for).
    path = get_store().local_path(examples["examples"])
    path.write_text("corrupted\n")
    rebuilt = synthesize_flow(recipe, again.outputs)
    assert rebuilt.status == "completed"
    assert rebuilt.output("examples")["examples"].sha256 == examples["examples"].sha256
    assert rebuilt.output("examples").counts["requests"] == 0
    assert rebuilt.output("examples").counts["cache_hits"] >= 1
    assert get_store().verify(examples["examples"])
