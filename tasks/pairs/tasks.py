"""Prefect task of the pairs stage.

Inputs: the training split (its prompts) and the student's GGUF (or production's, on-policy).
Output: ``pairs`` (DPO JSONL: prompt/chosen/rejected, critique in metadata) and ``traces``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from prefect import task

from tasks.core.caching import stage_cache_key
from tasks.core.jsonl import read_jsonl, write_jsonl
from tasks.core.progress import Progress
from tasks.core.recipe import PairsConfig, TeacherConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import retry_unless_permanent
from tasks.core.store import get_store
from tasks.pairs.build import STEPS, build_pairs, grade_summary, prompts_from_examples


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json", retries=1,
      retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def build_preference_pairs(train: ArtifactRef, student_gguf: str, config: PairsConfig,
                           teacher_config: TeacherConfig, min_chars: int,
                           production: ArtifactRef | None = None) -> StageOutput:
    """Training prompts -> respond (student) -> critique -> improve -> evaluate -> DPO pairs.

    ``min_chars`` is curate's: an answer curate would drop as degenerate cannot be a pair's chosen side.

    With ``production`` (on-policy), the GGUF now in production writes the first responses instead of
    the base model, so a rejected side is what users are being served today.
    """
    from tasks.core.models import resolve_gguf
    from tasks.core.settings import get_settings
    from tasks.teacher.cache import RequestCache
    from tasks.teacher.llama_cpp import LlamaCppChat
    from tasks.teacher.teacher import Teacher, fresh_stats, get_teacher

    store = get_store()
    prompts = prompts_from_examples(read_jsonl(store.local_path(train)), config.max_prompts)
    teacher = get_teacher(teacher_config)
    stats = fresh_stats(teacher)
    respondent = store.local_path(production) if production is not None else resolve_gguf(student_gguf)
    name = f"production-{production.sha256[:12]}" if production is not None else student_gguf
    student = Teacher(LlamaCppChat(respondent, n_ctx=teacher_config.n_ctx, model=name),
                      RequestCache(get_settings().cache_dir / "student.sqlite"))
    progress = Progress("pairs", STEPS * len(prompts))
    try:
        pairs, traces = build_pairs(prompts, student, teacher, config, teacher_config, min_chars, progress=progress)
    finally:
        progress.close()
        student.provider.close()
    decisions = Counter(t["decision"] for t in traces)
    with tempfile.TemporaryDirectory() as tmp:
        n = write_jsonl(Path(tmp) / "pairs.jsonl", pairs)
        pairs_ref = store.put_file(Path(tmp) / "pairs.jsonl", kind="pairs", rows=n)
        write_jsonl(Path(tmp) / "traces.jsonl", traces)
        traces_ref = store.put_file(Path(tmp) / "traces.jsonl", kind="traces", rows=len(traces))
    return StageOutput(
        artifacts={"pairs": pairs_ref, "traces": traces_ref},
        counts={"prompts": len(prompts), "pairs": n, "pair_yield": round(n / max(len(prompts), 1), 3),
                "respondent": name, **grade_summary(traces),
                **{f"decision_{k}": v for k, v in decisions.items()}, "student_calls": student.stats.requests,
                **{f"teacher_{k}": v for k, v in stats.model_dump().items()}},
        teacher_calls=stats.requests,
    )
