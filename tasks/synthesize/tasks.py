"""Prefect task of the synthesize stage.

Input: the collected record JSONLs. Output: ``examples`` (SyntheticExample JSONL) and ``rejected``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task

from tasks.core.caching import stage_cache_key
from tasks.core.jsonl import read_jsonl, write_jsonl
from tasks.core.progress import Progress
from tasks.core.recipe import SynthesizeConfig, TeacherConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import retry_unless_permanent
from tasks.core.store import get_store
from tasks.synthesize.generate import synthesize


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json", retries=1,
      retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def synthesize_examples(records: list[ArtifactRef], config: SynthesizeConfig,
                        teacher_config: TeacherConfig) -> StageOutput:
    """Collected records -> SFT examples (human ones as they are, teacher ones validated)."""
    from tasks.teacher.teacher import fresh_stats, get_teacher

    store = get_store()
    rows = [row for ref in records for row in read_jsonl(store.local_path(ref))]
    teacher = get_teacher(teacher_config)
    stats = fresh_stats(teacher)
    generator_teacher = teacher
    if teacher_config.shards > 1:  # the generators' maps fan out onto Dask workers (tasks/teacher/scale.py)
        from tasks.teacher.scale import ShardedTeacher

        generator_teacher = ShardedTeacher(teacher, teacher_config)
    progress = Progress("synthesize", min(config.max_items, len(rows)))
    try:
        examples, rejected = synthesize(rows, config, teacher_config, generator_teacher, progress=progress)
    finally:
        progress.close()
    with tempfile.TemporaryDirectory() as tmp:
        n = write_jsonl(Path(tmp) / "examples.jsonl", examples)
        out = store.put_file(Path(tmp) / "examples.jsonl", kind="dataset", rows=n)
        write_jsonl(Path(tmp) / "rejected.jsonl", rejected)
        rej = store.put_file(Path(tmp) / "rejected.jsonl", kind="rejected", rows=len(rejected))
    return StageOutput(
        artifacts={"examples": out, "rejected": rej},
        counts={"examples": n, "rejected": len(rejected), **stats.model_dump()},
        teacher_calls=stats.requests,
    )
