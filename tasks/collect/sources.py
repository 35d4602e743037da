"""One entry point for every source kind, plus the JSONL format records are stored in.

:func:`collect_source` dispatches on ``SourceConfig.kind`` and applies the two incremental rules the
same way for every collector:

* ``watermark``: network sources fetch only items changed after it (each collector pushes it into
  its query where the service allows, or filters). The returned watermark never moves backwards, and
  a collector whose listing was cut short before reaching everything older than the newest item it
  saw does not advance it (see each collector). Local files (dumps, PDFs, saved notes) are read whole:
  their cache key is their content hash, and the ``known`` rule below keeps them incremental.
* ``known``: an item whose id and content sha the store already holds is counted as unchanged and
  left out, so collecting the same content again never duplicates it.

A failure of the whole source (unreachable service, retries exhausted) raises
:class:`~tasks.collect.common.CollectError`, a wrong source entry (missing path, missing option) its
subclass :class:`~tasks.collect.common.SourceConfigError`, a malformed local file (a dump that is not XML,
a seed file that is not JSON) :class:`~tasks.collect.common.BadSourceFile`; a bad item is a
:class:`Rejected` record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import Field

from tasks.collect.common import BadSourceFile, SourceConfigError, logger, newest, parse_watermark
from tasks.collect.records import Instruction, Paper, PaperSection, Profile, QAPair, Record, Rejected, Review
from tasks.core.hashing import sha256_bytes, sha256_dir, sha256_file
from tasks.core.recipe import SourceConfig
from tasks.core.refs import Frozen

RECORD_TYPES: dict[str, type[Record]] = {
    cls.__name__: cls for cls in (Paper, PaperSection, QAPair, Review, Profile, Instruction)
}
AnyRecord = Paper | PaperSection | QAPair | Review | Profile | Instruction
LOCAL_KINDS = frozenset({"stackexchange_dump", "arxiv_pdfs", "openreview_files", "peerread", "instructions"})
INSTRUCTION_TYPES = frozenset({"qa", "completion", "generation", "response"})


class CollectBatch(Frozen):
    """What one collection of one source produced."""

    records: list[AnyRecord] = Field(default_factory=list, description="New or changed records.")
    rejected: list[Rejected] = Field(
        default_factory=list, description="Items that could not be used, with reasons."
    )
    watermark: str | None = Field(
        default=None, description="ISO datetime of the newest item seen (never older than the input)."
    )
    skipped_unchanged: int = Field(
        default=0, description="Items the store already holds with the same content."
    )


def source_fingerprint(source: SourceConfig) -> str:
    """sha256 of a local source's file or folder content; "" for network kinds.

    A missing path gets a fingerprint of its name, so the collect task runs and reports the clear
    error instead of the flow failing while it computes cache keys.
    """
    if source.kind not in LOCAL_KINDS:
        return ""
    path = source.resolved_path()
    if path is None:
        return sha256_bytes(b"no path")
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return sha256_dir(path)
    return sha256_bytes(f"missing:{path}".encode())


def write_records_jsonl(path: Path, records: Iterable[Record]) -> int:
    """Write records as JSONL, one object per line with a ``record_type`` key; return the line count."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            name = type(record).__name__
            if name not in RECORD_TYPES:
                raise TypeError(f"not a collect record type: {name}")
            data = {"record_type": name, **record.model_dump(mode="json")}
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_records_jsonl(path: Path) -> list[Record]:
    """Read records written by :func:`write_records_jsonl`, each as its own type."""
    records: list[Record] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            data = json.loads(line)
            name = data.pop("record_type", None)
            if name not in RECORD_TYPES:
                raise ValueError(f"{path}:{number}: unknown record_type {name!r}")
            records.append(RECORD_TYPES[name].model_validate(data))
    return records


MAX_INSTRUCTION_CHARS = 100_000  # a seed instruction is a prompt, not a document


def read_instructions(path: Path, limit: int | None = None) -> tuple[list[Instruction], list[Rejected]]:
    """Seed instructions from JSONL, a JSON list or a YAML list of ``{type, prompt}`` (or ``instruction``).

    A JSONL line that is not UTF-8 or not JSON, and an entry with an unknown type, no prompt or a prompt
    over ``MAX_INSTRUCTION_CHARS``, is rejected with its reason and the rest is kept; a whole JSON or
    YAML file that does not parse fails the source with a clear error. Ids are the given ``id``
    or a hash of type and prompt, so the same seed is the same record across files.
    """
    if not path.is_file():
        raise SourceConfigError(f"instructions: {path} is not a file")
    source = f"instructions:{path.name}"
    rejected: list[Rejected] = []
    if path.suffix == ".jsonl":  # line by line: a bad line is rejected, the rest is kept
        entries = []
        for number, raw in enumerate(path.read_bytes().splitlines(), 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    entries.append((f"line {number}", json.loads(line)))
            except UnicodeDecodeError as exc:
                rejected.append(Rejected(source=source, item=f"line {number}", reason=f"not UTF-8: {exc.reason}"))
            except ValueError as exc:
                rejected.append(Rejected(source=source, item=f"line {number}", reason=f"malformed JSON: {exc}"[:300]))
    else:
        try:
            text = path.read_text(encoding="utf-8")
            parsed = json.loads(text) if path.suffix == ".json" else (yaml.safe_load(text) or [])
        except UnicodeDecodeError as exc:
            raise BadSourceFile(f"instructions: {path.name} is not UTF-8: {exc}"[:500]) from exc
        except (ValueError, yaml.YAMLError) as exc:
            raise BadSourceFile(
                f"instructions: {path.name} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"[:500]
            ) from exc
        if isinstance(parsed, dict):
            parsed = parsed.get("instructions", [])
        if not isinstance(parsed, list):
            raise BadSourceFile(f"instructions: {path.name} holds no list of instructions")
        entries = [(f"entry {number}", entry) for number, entry in enumerate(parsed, 1)]
    out: list[Instruction] = []
    for label, entry in entries:
        if not isinstance(entry, dict):
            rejected.append(Rejected(source=source, item=label, reason="not a mapping"))
            continue
        kind = str(entry.get("type", "qa")).lower()
        prompt = str(entry.get("prompt") or entry.get("instruction") or "").strip()
        item = str(entry.get("id") or label)
        if kind not in INSTRUCTION_TYPES:
            rejected.append(Rejected(source=source, item=item, reason=f"unknown type {kind!r}"))
            continue
        if not prompt:
            rejected.append(Rejected(source=source, item=item, reason="empty prompt"))
            continue
        if len(prompt) > MAX_INSTRUCTION_CHARS:
            rejected.append(Rejected(source=source, item=item,
                                     reason=f"prompt of {len(prompt)} characters (limit {MAX_INSTRUCTION_CHARS})"))
            continue
        record_id = (
            entry.get("id") or "instruction:" + hashlib.sha256(f"{kind}\0{prompt}".encode()).hexdigest()[:16]
        )
        out.append(Instruction(id=str(record_id), source=source, type=kind, prompt=prompt))
        if limit is not None and len(out) >= limit:
            break
    return out, rejected


def _required_path(source: SourceConfig) -> Path:
    path = source.resolved_path()
    if path is None:
        raise SourceConfigError(f"{source.kind}: needs a path")
    return path


def _collect_stackexchange_dump(source: SourceConfig, since: datetime | None):
    from tasks.collect.stackexchange import parse_posts_xml

    path = _required_path(source)
    if path.is_dir():
        files = sorted(path.glob("Posts*.xml"))
        if not files:
            raise SourceConfigError(f"stackexchange_dump: no Posts*.xml in {path}")
        folder = path
    elif path.is_file():
        files, folder = [path], path.parent
    else:
        raise SourceConfigError(f"stackexchange_dump: {path} does not exist")
    site = str(source.options.get("site") or source.query or folder.name)
    records: list[Record] = []
    rejected: list[Rejected] = []
    newest_seen: datetime | None = None
    cut = False
    for file in files:
        remaining = None if source.limit is None else source.limit - len(records)
        if remaining is not None and remaining <= 0:
            cut = True
            break
        pairs, bad = parse_posts_xml(file, site, limit=remaining, since=since)
        cut = cut or (remaining is not None and len(pairs) >= remaining)
        records.extend(pairs)
        rejected.extend(bad)
        for pair in pairs:
            newest_seen = newest(newest_seen, pair.updated)
    # A dump is in id order, not time order: a cut listing must not move the watermark.
    return records, rejected, (None if cut else newest_seen), 0


def _collect_stackexchange_api(source: SourceConfig, since: datetime | None):
    from tasks.collect.common import RetryPolicy
    from tasks.collect.stackexchange import DEFAULT_API_BASE, DEFAULT_SITE, StackExchangeClient, collect_api

    options = source.options
    key_env = options.get("key_env")
    client = StackExchangeClient(
        base_url=str(options.get("base_url", DEFAULT_API_BASE)),
        key=os.environ.get(str(key_env)) if key_env else None,
        policy=RetryPolicy.from_options(options),
        min_quota=int(options.get("min_quota", 1)),
    )
    site = str(source.query or options.get("site") or DEFAULT_SITE)
    result = collect_api(
        client,
        site,
        since=since,
        limit=source.limit,
        page_size=int(options.get("page_size", 100)),
        tagged=options.get("tagged"),
        max_pages=options.get("max_pages"),
    )
    if result.stopped == "quota":
        logger.warning(
            "stackexchange_api %s: stopped at the quota; the watermark stays at the last full page", site
        )
    return result.pairs, result.rejected, result.watermark, 0


def _collect_arxiv_pdfs(source: SourceConfig, known: dict[str, str], since: datetime | None):
    from tasks.collect.arxiv import collect_local_pdfs

    result = collect_local_pdfs(
        _required_path(source),
        known,
        {"source_name": "arxiv:local", **source.options},
        limit=source.limit,
        since=since,
    )
    return result.records, result.rejected, result.final_watermark(), result.skipped_unchanged


def _collect_arxiv_query(source: SourceConfig, known: dict[str, str], since: datetime | None):
    from tasks.collect.arxiv import collect_arxiv_query

    result = collect_arxiv_query(
        source.query, list(source.ids), known, dict(source.options), limit=source.limit, since=since
    )
    return result.records, result.rejected, result.final_watermark(), result.skipped_unchanged


def _collect_openreview(source: SourceConfig, since: datetime | None):
    from tasks.collect.openreview import collect_openreview_api

    if not source.query:
        raise SourceConfigError("openreview: query must be the venue id, e.g. ICLR.cc/2026/Conference")
    options = dict(source.options)
    if source.ids:
        options["forum_ids"] = list(source.ids)
    reviews, rejected, mark = collect_openreview_api(source.query, options, limit=source.limit, since=since)
    return reviews, rejected, mark, 0


def _collect_openreview_files(source: SourceConfig, since: datetime | None):
    from tasks.collect.openreview import read_openreview_files

    reviews, rejected, mark = read_openreview_files(_required_path(source), limit=source.limit, since=since)
    return reviews, rejected, mark, 0


def _collect_peerread(source: SourceConfig, since: datetime | None):
    from tasks.collect.openreview import read_peerread

    reviews, rejected, mark = read_peerread(_required_path(source), limit=source.limit, since=since)
    return reviews, rejected, mark, 0


def _collect_postgres(source: SourceConfig, since: datetime | None):
    from tasks.collect.postgres import collect_profiles

    scored_by = source.options.get("scored_by") or source.query
    profiles, rejected, mark = collect_profiles(
        dict(source.options), scored_by, limit=source.limit, since=since
    )
    return profiles, rejected, mark, 0


def _collect_instructions(source: SourceConfig, since: datetime | None):
    instructions, rejected = read_instructions(_required_path(source), limit=source.limit)
    return instructions, rejected, None, 0


def collect_source(
    source: SourceConfig, known: dict[str, str] | None = None, watermark: str | None = None
) -> CollectBatch:
    """Collect one source: new or changed records since ``watermark``, minus what ``known`` holds.

    Args:
        source: The recipe's source entry (kind, path, query, ids, limit, options).
        known: Record id -> content sha of what the store already holds for this source.
        watermark: ISO datetime from the previous run; only newer items are fetched.

    Returns:
        The batch: records (deduplicated by id), rejected items, the new watermark, and how many items
        were skipped as unchanged.

    Raises:
        CollectError: the source as a whole could not be collected.
        SourceConfigError: the source entry is wrong (a retry cannot help).
        BadSourceFile: a local file is malformed (a retry cannot help).
    """
    known = known or {}
    since = parse_watermark(watermark)
    kind = source.kind
    # Local files are read whole and deduplicated by content sha. Filtering them by the watermark
    # saves nothing and could drop an item with an old date that first appears in a newer file.
    fetch_since = None if kind in LOCAL_KINDS else since
    if kind == "stackexchange_dump":
        records, rejected, mark, skipped = _collect_stackexchange_dump(source, fetch_since)
    elif kind == "stackexchange_api":
        records, rejected, mark, skipped = _collect_stackexchange_api(source, fetch_since)
    elif kind == "arxiv_pdfs":
        records, rejected, mark, skipped = _collect_arxiv_pdfs(source, known, fetch_since)
    elif kind == "arxiv_query":
        records, rejected, mark, skipped = _collect_arxiv_query(source, known, fetch_since)
    elif kind == "openreview":
        records, rejected, mark, skipped = _collect_openreview(source, fetch_since)
    elif kind == "openreview_files":
        records, rejected, mark, skipped = _collect_openreview_files(source, fetch_since)
    elif kind == "peerread":
        records, rejected, mark, skipped = _collect_peerread(source, fetch_since)
    elif kind == "postgres":
        records, rejected, mark, skipped = _collect_postgres(source, fetch_since)
    elif kind == "instructions":
        records, rejected, mark, skipped = _collect_instructions(source, fetch_since)
    else:  # the recipe schema makes this unreachable; kept for a clear message if it grows
        raise SourceConfigError(f"no collector for source kind {kind!r}")

    fresh: dict[str, Record] = {}
    for record in records:
        if known.get(record.id) == record.content_sha():
            skipped += 1
        else:
            fresh[record.id] = record  # the same id twice in one batch: the later one wins
    new_mark = newest(since, mark)
    logger.info("%s: %d new or changed, %d unchanged, %d rejected", kind, len(fresh), skipped, len(rejected))
    return CollectBatch(
        records=list(fresh.values()),
        rejected=rejected,
        watermark=new_mark.isoformat() if new_mark else None,
        skipped_unchanged=skipped,
    )
