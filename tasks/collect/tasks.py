"""Prefect tasks of the collect stage: one source in, a records JSONL and a rejected JSONL out.

Inputs: a recipe's :class:`~tasks.core.recipe.SourceConfig`, its content fingerprint (local kinds)
and the recipe name. Outputs: :class:`~tasks.core.refs.StageOutput` with ``records`` (every record the
store holds for this source, JSONL with ``record_type``) and ``rejected`` (this run's rejected items).

Incremental state lives in the store at ``state/collect/<recipe>/<sha of the source config>.json``:
the ref of the last records JSONL and the watermark. Each run loads it, collects only what is new
or changed, merges (same id: the newer content replaces the older), writes the merged JSONL and moves
the state with a compare-and-swap, so two concurrent runs cannot both win.

A failed source is retried twice (after 2 s and 10 s), except when its recipe entry or its file is
wrong (:data:`retry_collect`): a missing or malformed file, or a missing option, fails at once with its
message.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task

from tasks.collect.common import BadSourceFile, SourceConfigError, logger
from tasks.collect.records import Record, Rejected
from tasks.collect.sources import collect_source, read_records_jsonl, write_records_jsonl
from tasks.core.caching import stage_cache_key, weekly_cache_key
from tasks.core.hashing import sha256_json
from tasks.core.recipe import SourceConfig
from tasks.core.refs import ArtifactRef, StageOutput
from tasks.core.stage import retry_unless
from tasks.core.store import ArtifactStore, StoreError, get_store

STATE_VERSION = 1


def state_key(recipe_name: str, source: SourceConfig) -> str:
    """Store key of the incremental state of one (recipe, source) pair."""
    return f"state/collect/{recipe_name}/{sha256_json(source.model_dump(mode='json'))}.json"


def _read_state(store: ArtifactStore, key: str) -> tuple[bytes | None, dict[str, Any], ArtifactRef | None]:
    """The state's raw bytes, its content, and the ref of its records when they are intact in the store."""
    raw = store.read_key(key)
    if raw is None:
        return None, {}, None
    state = json.loads(raw)
    ref = ArtifactRef.model_validate(state["records"])
    return raw, state, ref if store.verify(ref) else None


def load_previous(store: ArtifactStore, key: str) -> tuple[bytes | None, list[Record], str | None]:
    """The state's raw bytes, the records it points to and its watermark.

    A state whose records are gone from the store (a wiped folder) is treated as empty, watermark
    included: keeping the watermark without the records would lose them for good.
    """
    raw, state, ref = _read_state(store, key)
    if raw is None:
        return None, [], None
    try:
        if ref is None:
            raise StoreError(f"{state['records']['uri']} is missing or does not match its sha256")
        records = read_records_jsonl(store.local_path(ref))
    except (StoreError, OSError, ValueError) as exc:
        logger.warning(
            "collect state %s points to unreadable records (%s); collecting from scratch", key, exc
        )
        return raw, [], None
    return raw, records, state.get("watermark")


def merge_records(previous: list[Record], fresh: list[Record]) -> tuple[list[Record], int, int]:
    """Previous records updated with fresh ones by id; returns (merged, added, replaced)."""
    merged: dict[str, Record] = {record.id: record for record in previous}
    added = replaced = 0
    for record in fresh:
        if record.id in merged:
            replaced += 1
        else:
            added += 1
        merged[record.id] = record
    return list(merged.values()), added, replaced


def _write_rejected(path: Path, rejected: list[Rejected]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(
            json.dumps(item.model_dump(mode="json"), ensure_ascii=False) + "\n" for item in rejected
        )


def collect_into_store(
    source: SourceConfig, recipe_name: str, store: ArtifactStore | None = None
) -> StageOutput:
    """Collect one source incrementally and store the merged records and this run's rejected items.

    Args:
        source: The source to collect.
        recipe_name: Names the state, so two recipes reading one source keep separate snapshots.
        store: The artifact store (default: from settings).

    Returns:
        Refs ``records`` and ``rejected``; counts ``collected`` (records held now), ``new``,
        ``updated``, ``unchanged``, ``rejected`` and the ``watermark``.

    Raises:
        CollectError: the source failed as a whole (``SourceConfigError``: its recipe entry is wrong).
        PointerConflict: another run moved the state first (the task's retry starts over from it).
    """
    store = store or get_store()
    key = state_key(recipe_name, source)
    raw, previous, watermark = load_previous(store, key)
    known = {record.id: record.content_sha() for record in previous}
    batch = collect_source(source, known=known, watermark=watermark)
    merged, added, replaced = merge_records(previous, list(batch.records))
    with tempfile.TemporaryDirectory(prefix="distillery-collect-") as tmp:
        records_path = Path(tmp) / "records.jsonl"
        rejected_path = Path(tmp) / "rejected.jsonl"
        write_records_jsonl(records_path, merged)
        _write_rejected(rejected_path, list(batch.rejected))
        records_ref = store.put_file(records_path, kind="records", rows=len(merged))
        rejected_ref = store.put_file(rejected_path, kind="rejected", rows=len(batch.rejected))
    state = {
        "version": STATE_VERSION,
        "recipe": recipe_name,
        "kind": source.kind,
        "records": records_ref.model_dump(mode="json"),
        "watermark": batch.watermark,
        "collected_at": datetime.now(UTC).isoformat(),
    }
    store.write_pointer(key, json.dumps(state, indent=2, sort_keys=True).encode(), expected=raw)
    counts: dict[str, Any] = {
        "collected": len(merged),
        "new": added,
        "updated": replaced,
        "unchanged": batch.skipped_unchanged,
        "rejected": len(batch.rejected),
        "watermark": batch.watermark,
    }
    logger.info("collect %s/%s: %s", recipe_name, source.kind, counts)
    return StageOutput(artifacts={"records": records_ref, "rejected": rejected_ref}, counts=counts)


def previous_snapshot(source: SourceConfig, recipe_name: str, store: ArtifactStore | None = None) -> StageOutput | None:
    """The records the last successful collection of this source left in the store, or None.

    What a run falls back on when the source fails this time (see ``flows/collect.py``): nothing new,
    but nothing lost either. ``counts["collected_at"]`` says how old the snapshot is.
    """
    _, state, ref = _read_state(store or get_store(), state_key(recipe_name, source))
    if ref is None:
        return None
    counts = {"collected": ref.rows, "new": 0, "updated": 0, "unchanged": 0, "rejected": 0,
              "watermark": state.get("watermark"), "collected_at": state.get("collected_at")}
    return StageOutput(artifacts={"records": ref}, counts=counts)


def collect_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Content-keyed for local sources (a fingerprint is given), weekly for network sources."""
    if parameters.get("fingerprint"):
        return stage_cache_key(context, parameters)
    return weekly_cache_key(context, parameters)


# What a retry, or next week's run, cannot fix: a wrong source entry (missing path, missing option,
# unknown site or table), a malformed or missing file. The task fails at once and the collect flow does
# not stand a snapshot in for it; a lost state race (PointerConflict) and service failures are retried.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (SourceConfigError, BadSourceFile, FileNotFoundError)
retry_collect = retry_unless(*PERMANENT_ERRORS)


@task(
    name="collect_source",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_collect,
    cache_key_fn=collect_cache_key,
    persist_result=True,
    result_serializer="json",
)
def collect_source_task(source: SourceConfig, fingerprint: str, recipe_name: str) -> StageOutput:
    """Collect one recipe source into the store (see :func:`collect_into_store`).

    ``fingerprint`` is only a cache input: the content hash of a local source, "" for network ones.
    """
    return collect_into_store(source, recipe_name, get_store())
