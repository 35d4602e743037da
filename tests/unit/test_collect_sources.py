"""collect_source dispatch, incremental rules, fingerprints and the records JSONL format."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.collect.common import (
    BadSourceFile,
    CollectError,
    RetryPolicy,
    SourceConfigError,
    parse_watermark,
)
from tasks.collect.records import Instruction, Paper, PaperSection, Profile, QAPair, Rejected, Review
from tasks.collect.sources import (
    CollectBatch,
    collect_source,
    read_instructions,
    read_records_jsonl,
    source_fingerprint,
    write_records_jsonl,
)
from tasks.collect.tasks import retry_collect
from tasks.core.recipe import SourceConfig
from tasks.core.store import PointerConflict

REPO = Path(__file__).resolve().parents[2]
AI_DIR = REPO / "data" / "sample" / "stackexchange" / "ai.stackexchange.com"
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _one_of_each(text: str = "text") -> list:
    return [
        Paper(id="arxiv:1", source="s", updated=WHEN, title=text, authors=["A"], pdf_sha256="ab"),
        PaperSection(
            id="arxiv:1#0",
            source="s",
            paper_id="1",
            paper_title=text,
            section_title="Title",
            index=0,
            text=text,
            flags=["hidden_text:white"],
        ),
        QAPair(id="q", source="s", title=text, question=text, answer=text, tags=["t"], score=3),
        Review(id="r", source="s", forum_id="f", paper_title=text, rating=6.0, decision="Accept"),
        Profile(id="p", source="s", handle="@h", bio=text, score=0.9, reason="r", scored_by="m"),
        Instruction(id="i", source="s", type="qa", prompt=text),
    ]


def test_jsonl_round_trips_every_record_type(tmp_path):
    records = _one_of_each()
    path = tmp_path / "r.jsonl"
    assert write_records_jsonl(path, records) == 6
    back = read_records_jsonl(path)
    assert back == records
    assert [type(r) for r in back] == [type(r) for r in records]


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_jsonl_round_trips_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("j") / "r.jsonl"
    text = text.encode("utf-8", "replace").decode("utf-8")  # records hold valid UTF-8 text only
    records = _one_of_each(text)
    write_records_jsonl(path, records)
    assert read_records_jsonl(path) == records


def test_jsonl_refuses_an_unknown_record_type(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"record_type": "Nope", "id": "x"}\n')
    with pytest.raises(ValueError, match="unknown record_type"):
        read_records_jsonl(path)


def test_collect_batch_keeps_each_record_type():
    batch = CollectBatch(records=_one_of_each(), rejected=[Rejected(source="s", item="x", reason="r")])
    dumped = batch.model_dump(mode="json")
    assert dumped["records"][1]["flags"] == ["hidden_text:white"]
    assert CollectBatch.model_validate(dumped) == batch


def test_dump_source_collects_then_skips_what_the_store_already_holds():
    source = SourceConfig(kind="stackexchange_dump", path=str(AI_DIR))
    first = collect_source(source)
    assert len(first.records) == 60 and first.skipped_unchanged == 0 and first.rejected == []
    known = {r.id: r.content_sha() for r in first.records}
    again = collect_source(source, known=known)
    assert again.records == [] and again.skipped_unchanged == 60
    # One stored item differs: only that one comes back.
    changed = dict(known, **{first.records[0].id: "stale"})
    partial = collect_source(source, known=changed)
    assert [r.id for r in partial.records] == [first.records[0].id] and partial.skipped_unchanged == 59


def test_watermark_never_moves_backwards_and_does_not_filter_local_files():
    source = SourceConfig(kind="stackexchange_dump", path=str(AI_DIR))
    first = collect_source(source)
    assert first.watermark == max(r.updated for r in first.records).isoformat()
    # A local file is read whole: an item older than the watermark that is new to the store is kept.
    later = collect_source(source, watermark=first.watermark)
    assert len(later.records) == 60 and later.watermark == first.watermark
    future = "2030-01-01T00:00:00+00:00"
    assert collect_source(source, watermark=future).watermark == future


def test_a_limit_cut_does_not_advance_the_watermark():
    source = SourceConfig(kind="stackexchange_dump", path=str(AI_DIR), limit=5)
    batch = collect_source(source)
    assert len(batch.records) == 5 and batch.watermark is None
    assert collect_source(source, watermark="2010-01-01T00:00:00Z").watermark == "2010-01-01T00:00:00+00:00"


def test_missing_paths_and_bad_watermarks_are_clear_errors(tmp_path):
    with pytest.raises(SourceConfigError, match="does not exist"):
        collect_source(SourceConfig(kind="stackexchange_dump", path=str(tmp_path / "nope")))
    with pytest.raises(SourceConfigError, match="no Posts"):
        collect_source(SourceConfig(kind="stackexchange_dump", path=str(tmp_path)))
    with pytest.raises(CollectError, match="not an ISO 8601"):
        collect_source(SourceConfig(kind="stackexchange_dump", path=str(AI_DIR)), watermark="last tuesday")
    with pytest.raises(SourceConfigError, match="needs a path"):
        collect_source(SourceConfig(kind="peerread"))
    with pytest.raises(SourceConfigError, match="venue id"):
        collect_source(SourceConfig(kind="openreview"))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (SourceConfig(kind="stackexchange_dump", path="data/sample/no-such-dump/Posts.xml"), "not exist"),
        (SourceConfig(kind="arxiv_pdfs", path="data/sample/no-such-folder"), "does not exist"),
        (SourceConfig(kind="arxiv_query"), "needs a query or ids"),
        (SourceConfig(kind="openreview_files", path="data/sample/no-such-folder"), "does not exist"),
        (SourceConfig(kind="instructions", path="data/sample/no-such-seeds.jsonl"), "is not a file"),
        (SourceConfig(kind="postgres"), "must name the scoring model"),
    ],
    ids=["dump", "pdfs", "query", "openreview-files", "instructions", "postgres"],
)
def test_a_wrong_source_entry_is_a_config_error(source, message):
    # No network and no database: each is refused before any service is asked.
    with pytest.raises(SourceConfigError, match=message):
        collect_source(source)


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("Posts.xml", b"<posts><row Id='1'", "stackexchange_dump"),
        ("metadata.json", b'{"a.pdf": {"id": "2401.00001"', "arxiv_pdfs"),
        ("metadata.json", b'[{"id": "2401.00001"}]', "arxiv_pdfs"),  # a list entry without "file"
        ("seeds.json", b'[{"prompt": "unterminated}', "instructions"),
    ],
    ids=["dump-xml", "metadata-json", "metadata-shape", "seeds-json"],
)
def test_a_malformed_local_file_fails_at_once_naming_the_file(tmp_path, name, content, kind):
    (tmp_path / name).write_bytes(content)
    path = tmp_path / name if kind != "arxiv_pdfs" else tmp_path
    with pytest.raises(BadSourceFile, match=re.escape(name)) as caught:
        collect_source(SourceConfig(kind=kind, path=str(path)))
    assert retry_collect(None, None, _FailedState(caught.value)) is False


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("openreview", {"api_version": "v3"}, "option api_version: Input should be 'v1' or 'v2'"),
        ("stackexchange_api", {"page_sise": 50}, "unknown option 'page_sise' (did you mean 'page_size'?)"),
        ("stackexchange_api", {"page_size": 500}, "option page_size: Input should be less than or equal to 100"),
        ("arxiv_query", {"sort_by": "date"}, "option sort_by: Input should be 'relevance'"),
        ("postgres", {"batch_size": "lots"}, "option batch_size: Input should be a valid integer"),
        ("postgres", {"schema": "crm", "scores_table": "s"}, None),
        ("instructions", {"max_items": 3}, "unknown option 'max_items' (options of instructions: none)"),
    ],
    ids=["bad-value", "misspelt", "out-of-range", "bad-choice", "bad-type", "valid", "kind-without-options"],
)
def test_source_options_are_checked_when_the_recipe_loads(kind, options, message):
    if message is None:
        assert SourceConfig(kind=kind, options=options).options == options
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        SourceConfig(kind=kind, options=options)


def test_a_misspelt_option_fails_the_recipe_before_anything_runs():
    from tasks.core.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=re.escape("collect.sources.0: Value error, stackexchange_dump source: "
                                                    "unknown option 'sit' (did you mean 'site'?)")):
        load_recipe("stats-qa", overrides=["collect.sources=[{kind: stackexchange_dump, path: x, options: {sit: ai}}]"])


def test_fingerprint_follows_local_content_and_is_empty_for_network_kinds(tmp_path):
    folder = tmp_path / "dump"
    shutil.copytree(AI_DIR, folder)
    source = SourceConfig(kind="stackexchange_dump", path=str(folder))
    first = source_fingerprint(source)
    assert len(first) == 64 and first == source_fingerprint(source)
    (folder / "Posts.xml").write_bytes((folder / "Posts.xml").read_bytes() + b"\n")
    assert source_fingerprint(source) != first
    single = SourceConfig(kind="peerread", path=str(folder / "Posts.xml"))
    assert len(source_fingerprint(single)) == 64
    missing = SourceConfig(kind="peerread", path=str(tmp_path / "gone"))
    assert source_fingerprint(missing) != source_fingerprint(
        SourceConfig(kind="peerread", path=str(tmp_path / "x"))
    )
    for kind in ("stackexchange_api", "arxiv_query", "openreview", "postgres"):
        assert source_fingerprint(SourceConfig(kind=kind, query="q")) == ""


def test_instructions_from_jsonl_and_yaml(tmp_path):
    jsonl = tmp_path / "seeds.jsonl"
    jsonl.write_text(
        '{"type": "qa", "prompt": "What is a p-value?"}\n'
        '{"type": "poem", "prompt": "x"}\n'
        '{"type": "generation", "prompt": "  "}\n'
        '{"id": "fixed", "type": "completion", "instruction": "Complete: the mean is"}\n'
    )
    found, rejected = read_instructions(jsonl)
    assert [(i.type, i.prompt) for i in found] == [
        ("qa", "What is a p-value?"),
        ("completion", "Complete: the mean is"),
    ]
    assert found[1].id == "fixed" and found[0].id.startswith("instruction:")
    assert [r.reason for r in rejected] == ["unknown type 'poem'", "empty prompt"]
    yaml_file = tmp_path / "seeds.yaml"
    yaml_file.write_text("- type: response\n  prompt: Respond politely.\n")
    batch = collect_source(SourceConfig(kind="instructions", path=str(yaml_file)))
    assert [r.prompt for r in batch.records] == ["Respond politely."]
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(CollectError, match="not valid json"):
        read_instructions(broken)


def test_watermark_parsing_and_backoff():
    # Retry-After itself: tests/unit/test_teacher_policy.py (one parser for collectors and teacher).
    assert parse_watermark("2024-05-01T12:30:00Z") == WHEN
    assert parse_watermark(None) is None
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=4.0)
    assert 0.5 <= policy.backoff(1) <= 1.0 and 2.0 <= policy.backoff(5) <= 4.0


class _FailedState:
    """The part of a Prefect state a ``retry_condition_fn`` reads: a result that raises."""

    def __init__(self, error: BaseException):
        self.error = error

    def result(self, raise_on_failure: bool = True):
        raise self.error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (SourceConfigError("stackexchange_dump: data/x/Posts.xml does not exist"), False),
        (FileNotFoundError("data/x/Posts.xml"), False),
        (BadSourceFile("stackexchange_dump: Posts.xml is not well-formed XML"), False),
        (ValueError("'sideways' is not a valid SortOrder"), False),
        (CollectError("stackexchange_api /questions: gave up after 5 tries: HTTP 503"), True),
        (ConnectionError("reset by peer"), True),
        (PointerConflict("another run moved the state"), True),  # the retry starts from the winner's state
    ],
    ids=["config", "missing-file", "malformed-file", "value", "service", "connection", "state-race"],
)
def test_the_collect_task_retries_only_what_a_retry_can_fix(error, retried):
    assert retry_collect(None, None, _FailedState(error)) is retried


def test_bad_instruction_lines_are_rejected_with_reasons_and_the_rest_kept(tmp_path):
    from tasks.collect.sources import MAX_INSTRUCTION_CHARS, read_instructions

    path = tmp_path / "seeds.jsonl"
    huge = "x" * (10 * 1024 * 1024)  # one 10 MB record
    path.write_bytes(b"\n".join([
        b'{"type": "qa", "prompt": "What is a p-value?"}',
        b'{"type": "qa", "prompt": "unterminated',
        b'{"type": "qa", "prompt": "caf\xe9 in latin-1"}',
        b"",
        json.dumps({"type": "qa", "prompt": huge}).encode(),
        b'{"type": "qa", "prompt": "Explain overfitting."}',
    ]))
    records, rejected = read_instructions(path)
    assert [r.prompt for r in records] == ["What is a p-value?", "Explain overfitting."]
    reasons = {r.item: r.reason for r in rejected}
    assert reasons["line 2"].startswith("malformed JSON")
    assert reasons["line 3"].startswith("not UTF-8")
    assert reasons["line 5"] == f"prompt of {len(huge)} characters (limit {MAX_INSTRUCTION_CHARS})"
    assert len(rejected) == 3

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert read_instructions(empty) == ([], [])


def test_an_instruction_file_that_is_not_utf8_fails_with_a_clear_error(tmp_path):
    from tasks.collect.sources import read_instructions

    path = tmp_path / "seeds.yaml"
    path.write_bytes(b"- type: qa\n  prompt: caf\xe9\n")
    with pytest.raises(BadSourceFile, match="seeds.yaml is not UTF-8"):
        read_instructions(path)


@pytest.mark.parametrize(
    ("kind", "sample"),
    [("openreview_files", "openreview/api_v2_iclr2026"), ("peerread", "peerread")],
)
def test_bad_files_among_saved_reviews_are_rejected_and_the_rest_kept(tmp_path, kind, sample):
    good = min((REPO / "data" / "sample" / sample).rglob("*.json"))
    shutil.copy(good, tmp_path / "good.json")
    (tmp_path / "latin1.json").write_bytes(b'{"id": "caf\xe9", "notes": [], "reviews": []}')
    (tmp_path / "empty.json").write_bytes(b"")
    (tmp_path / "truncated.json").write_text(good.read_text(encoding="utf-8")[:200], encoding="utf-8")
    alone = collect_source(SourceConfig(kind=kind, path=str(good)))
    batch = collect_source(SourceConfig(kind=kind, path=str(tmp_path)))
    assert alone.records and {r.id for r in batch.records} == {r.id for r in alone.records}
    reasons = {r.item: r.reason for r in batch.rejected}
    assert set(reasons) == {"latin1.json", "empty.json", "truncated.json"}
    assert "utf-8" in reasons["latin1.json"] and all(reason.startswith("unreadable") for reason in reasons.values())


def test_a_10_mb_question_in_a_dump_is_collected_whole_for_curate_to_limit(tmp_path):
    body = "&lt;p&gt;" + "word " * (2 * 1024 * 1024) + "&lt;/p&gt;"  # 10 MB of text in one attribute
    dates = 'CreationDate="2020-01-01T00:00:00.000" LastActivityDate="2020-01-02T00:00:00.000" Score="1"'
    rows = [
        f'<row Id="1" PostTypeId="1" AcceptedAnswerId="2" {dates} Title="Big" Tags="&lt;x&gt;" Body="{body}" />',
        f'<row Id="2" PostTypeId="2" ParentId="1" {dates} Body="&lt;p&gt;answer&lt;/p&gt;" />',
        f'<row Id="3" PostTypeId="1" AcceptedAnswerId="4" {dates} Title="Small" Tags="&lt;x&gt;" Body="&lt;p&gt;q?&lt;/p&gt;" />',
        f'<row Id="4" PostTypeId="2" ParentId="3" {dates} Body="&lt;p&gt;a.&lt;/p&gt;" />',
    ]
    dump = tmp_path / "Posts.xml"
    dump.write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n")
    batch = collect_source(SourceConfig(kind="stackexchange_dump", path=str(dump), query="x"))
    sizes = sorted(len(r.question) for r in batch.records)
    assert batch.rejected == [] and sizes[0] < 10 and sizes[1] > 10_000_000
