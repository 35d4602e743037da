"""Prefect tasks of the validate stage.

``evaluate_model``: a GGUF (a stored ref, or a built-in base model) + held-out set -> metrics and
predictions. Cached per model and data, so the base model's baseline is computed once.
``judge_against_base``: candidate and base predictions -> the teacher's win rate (``validate.judge_method``).
``decide_and_report``: candidate/base/production metrics -> GateDecision, markdown report, chart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.core.caching import stage_cache_key
from tasks.core.jsonl import read_jsonl, write_jsonl
from tasks.core.recipe import GateConfig, Recipe, TeacherConfig, ValidateConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import retry_unless_permanent
from tasks.core.store import get_store
from tasks.validate.evaluate import evaluate_gguf
from tasks.validate.gate import decide_gate
from tasks.validate.judge import BASE_AGAINST_ITSELF, judge_grades, judge_predictions
from tasks.validate.report import plot_comparison, report_markdown


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def evaluate_model(heldout: ArtifactRef, config: ValidateConfig, output_format: str, repeat_penalty: float,
                   model: ArtifactRef | None = None, builtin: str | None = None,
                   json_schema: dict | None = None) -> StageOutput:
    """Score one served model (a GGUF through llama.cpp) on the held-out set, decoded as served."""
    from tasks.core.models import resolve_gguf

    store = get_store()
    gguf = store.local_path(model) if model is not None else resolve_gguf(builtin or "")
    examples = read_jsonl(store.local_path(heldout))[: config.max_examples]
    if not examples:
        raise ValueError("the held-out set is empty: nothing to validate on (collect more data or raise "
                         "curate.heldout_fraction)")
    metrics, predictions = evaluate_gguf(gguf, examples, config.max_tokens, repeat_penalty, output_format,
                                         json_schema, scorer=config.scorer)
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(Path(tmp) / "predictions.jsonl", predictions)
        ref = store.put_file(Path(tmp) / "predictions.jsonl", kind="predictions", rows=len(predictions))
    return StageOutput(artifacts={"predictions": ref}, counts=metrics)


def evaluation_params(recipe: Recipe) -> dict[str, Any]:
    """The :func:`evaluate_model` inputs a recipe implies: the same in curate's baseline and in validate,
    so the base model is evaluated once."""
    from tasks.synthesize.outputs import output_schema

    return {"config": recipe.validate_, "output_format": recipe.output_format,
            "json_schema": output_schema(recipe.synthesize.generator, recipe.output_format),
            "repeat_penalty": recipe.package.repeat_penalty}


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json", retries=1,
      retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def judge_against_base(heldout: ArtifactRef, candidate: ArtifactRef, base: ArtifactRef, config: ValidateConfig,
                       teacher_config: TeacherConfig) -> StageOutput:
    """The teacher judges candidate vs base predictions on the held-out prompts: win rate."""
    from tasks.core.progress import Progress
    from tasks.teacher.teacher import fresh_stats, get_teacher

    store = get_store()
    rows = read_jsonl(store.local_path(heldout))[: config.max_examples]
    candidate_rows, base_rows = read_jsonl(store.local_path(candidate)), read_jsonl(store.local_path(base))
    teacher = get_teacher(teacher_config)
    stats = fresh_stats(teacher)
    progress = Progress("judge", len(candidate_rows))
    try:
        summary, judgements = judge_predictions(teacher, rows, candidate_rows, base_rows, seed=teacher_config.seed,
                                                max_repairs=teacher_config.max_repairs, progress=progress,
                                                method=config.judge_method)
    finally:
        progress.close()
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(Path(tmp) / "judgements.jsonl", judgements)
        ref = store.put_file(Path(tmp) / "judgements.jsonl", kind="judgements", rows=len(judgements))
    return StageOutput(artifacts={"judgements": ref}, counts={**summary, "teacher_calls": stats.requests},
                       teacher_calls=stats.requests)


def with_context(candidate: dict, base: dict, judge: dict | None, pairs: dict | None) -> tuple[dict, dict]:
    """Candidate and base metrics with the judge's win rate and the pair yield added.

    The base's win rate and mean preference against itself are 0.5 by definition (every pair a tie),
    so ``beat_base: [win_rate]`` means "the judge does not prefer the base". With the ``grade`` method
    each side also gets ``judge_grade``, the mean grade of its own answers. The pair yield is
    reported, not compared.
    """
    candidate, base = dict(candidate), dict(base)
    if judge:
        candidate.update({k: v for k, v in judge.items()
                          if (k == "win_rate" or k.startswith("judge_")) and not k.startswith("judge_grade_")})
        base.update(BASE_AGAINST_ITSELF)
        if grades := judge_grades(judge):
            candidate["judge_grade"], base["judge_grade"] = grades
    if pairs and "pair_yield" in pairs:
        candidate["pair_yield"] = pairs["pair_yield"]
    return candidate, base


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json")
def decide_and_report(recipe_name: str, gate: GateConfig, candidate: dict, base: dict,
                      production: dict | None = None, judge: dict | None = None,
                      pairs: dict | None = None) -> StageOutput:
    """The gate decision with every reason, a markdown report (also a Prefect artifact) and a chart.

    ``judge`` (the judge's counts) adds the win rate; ``pairs`` (the pairs stage's counts) the pair yield.
    """
    store = get_store()
    candidate, base = with_context(candidate, base, judge, pairs)
    decision = decide_gate(candidate, gate, base=base, production=production)
    columns = {"candidate": candidate, "base": base, **({"production": production} if production else {})}
    with tempfile.TemporaryDirectory() as tmp:
        chart = store.put_file(plot_comparison(columns, Path(tmp) / "validation.png"), kind="chart")
    markdown = report_markdown(recipe_name, "candidate vs base" + (" vs production" if production else ""),
                               columns, decision, chart.uri)
    report = store.put_bytes(markdown.encode(), "validation-report.md", kind="report")
    decision_ref = store.put_json(decision.model_dump(mode="json"), "gate-decision.json", kind="decision")
    create_markdown_artifact(key="validation-report", markdown=markdown, description=f"{recipe_name} validation")
    return StageOutput(artifacts={"report": report, "chart": chart, "decision": decision_ref},
                       counts={"gate": decision.model_dump(mode="json")})
