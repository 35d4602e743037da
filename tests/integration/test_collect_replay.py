"""HTTP collectors against the local replay server (real recorded responses, see tests/fakes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tasks.collect.arxiv import _download
from tasks.collect.common import CollectError, RetryPolicy, SourceConfigError
from tasks.collect.records import Paper, PaperSection
from tasks.collect.sources import collect_source
from tasks.core.recipe import SourceConfig
from tests.fakes.replay_server import Canned, running_replay_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = {"retry_base_delay_s": 0.01, "retry_attempts": 4}


@pytest.fixture()
def server():
    with running_replay_server() as replay:
        yield replay


def _arxiv(server, **options) -> dict:
    return {
        "base_url": f"{server.url}/arxiv/api/query",
        "pdf_base_url": f"{server.url}/arxiv",
        "delay_seconds": 0,
        "num_retries": 0,
        **FAST_RETRY,
        **options,
    }


def _se(server, **options) -> dict:
    return {"base_url": f"{server.url}/se/2.3", "page_size": 20, **FAST_RETRY, **options}


# --- arXiv -------------------------------------------------------------------------------------


def test_arxiv_query_pages_through_the_recorded_feeds(server):
    source = SourceConfig(
        kind="arxiv_query",
        query="testing",
        limit=25,
        options=_arxiv(server, page_size=10, download_pdfs=False),
    )
    batch = collect_source(source)
    assert len(batch.records) == 25 and all(isinstance(r, Paper) for r in batch.records)
    assert [s.query["start"] for s in server.requests] == ["0", "10", "20"]
    assert all(r.title and r.abstract and r.authors and r.pdf_url for r in batch.records)
    assert batch.watermark == max(r.updated for r in batch.records).isoformat()
    again = collect_source(source, known={r.id: r.content_sha() for r in batch.records})
    assert again.records == [] and again.skipped_unchanged == 25


def test_arxiv_missing_pdfs_are_rejected_and_retried_next_run(server):
    source = SourceConfig(kind="arxiv_query", query="testing", limit=10, options=_arxiv(server, page_size=10))
    batch = collect_source(source)
    assert batch.records == []
    assert len(batch.rejected) == 10 and {r.reason for r in batch.rejected} == {
        "PDF download failed: HTTP 404"
    }
    assert server.count("/arxiv/pdf/") == 10
    # The watermark stays below every failed paper, so the next run asks for them again.
    again = collect_source(source, watermark=batch.watermark)
    assert len(again.rejected) == 10


def test_arxiv_ids_real_metadata_and_pdf_the_empty_feed_and_the_400(server):
    source = SourceConfig(
        kind="arxiv_query", ids=["1111.2011v2", "0808.05394", "abc"], options=_arxiv(server, page_size=100)
    )
    batch = collect_source(source)
    papers = [r for r in batch.records if isinstance(r, Paper)]
    sections = [r for r in batch.records if isinstance(r, PaperSection)]
    assert [p.id for p in papers] == ["arxiv:1111.2011v2"]
    title = "Quantum Criticality for Extended Nodes on a Bethe Lattice in the Large Connectivity Limit"
    assert papers[0].title == title and papers[0].pdf_sha256
    assert sections[0].section_title == "Title" and sections[0].text == title
    assert sections[1].section_title == "Abstract"
    assert "I. INTRODUCTION" in [s.section_title for s in sections]
    assert all(s.paper_id == "1111.2011v2" and s.paper_title == title for s in sections)
    assert not any("ACKNOWLEDGMENTS" in s.section_title for s in sections)
    reasons = {r.item: r.reason for r in batch.rejected}
    assert reasons == {
        "0808.05394": "arXiv returned no entry for this id",
        "abc": "arXiv API answered HTTP 400 for this id",
    }
    statuses = [s.status for s in server.requests if s.path == "/arxiv/api/query"]
    assert 400 in statuses
    # Collected again: a versioned id names fixed content, so nothing is downloaded twice.
    downloads = server.count("/arxiv/pdf/")
    known = {r.id: r.content_sha() for r in batch.records}
    again = collect_source(source, known=known)
    assert again.records == [] and server.count("/arxiv/pdf/") == downloads


def test_arxiv_search_http_error_is_a_clear_source_error(server):
    server.script("/arxiv/api/query", [Canned(503, b"busy")])
    with pytest.raises(CollectError, match="arXiv API answered HTTP 503"):
        collect_source(
            SourceConfig(
                kind="arxiv_query",
                query="testing",
                limit=10,
                options=_arxiv(server, page_size=10, download_pdfs=False),
            )
        )


def test_pdf_download_obeys_retry_after_and_rides_out_a_503_burst(server, tmp_path):
    url = f"{server.url}/arxiv/pdf/2304.02623v1"
    server.script("/arxiv/pdf/", [Canned(429, b"slow down", {"Retry-After": "1"}), Canned(503), Canned(503)])
    started = time.monotonic()
    error = _download(requests.Session(), url, tmp_path / "p.pdf", RetryPolicy(base_delay_s=0.01), 50)
    assert error is None
    assert (tmp_path / "p.pdf").read_bytes() == (REPO / "data/sample/arxiv/pdf/2304.02623v1.pdf").read_bytes()
    hits = [s for s in server.requests if s.path.startswith("/arxiv/pdf/")]
    assert [s.status for s in hits] == [429, 503, 503, 200]
    assert hits[1].at - hits[0].at >= 0.95 and time.monotonic() - started < 5
    server.script("/arxiv/pdf/", [Canned(503)] * 3)
    error = _download(
        requests.Session(), url, tmp_path / "q.pdf", RetryPolicy(attempts=3, base_delay_s=0.01), 50
    )
    assert error == f"arXiv PDF {url}: gave up after 3 tries: HTTP 503"
    assert (
        _download(requests.Session(), url, tmp_path / "r.pdf", RetryPolicy(), 0.1) == "PDF larger than 0.1 MB"
    )


# --- Stack Exchange ------------------------------------------------------------------------------


def test_stackexchange_api_pages_joins_accepted_answers_and_matches_the_dump(server):
    source = SourceConfig(kind="stackexchange_api", query="ai.stackexchange.com", options=_se(server))
    batch = collect_source(source)
    assert len(batch.records) == 60 and batch.rejected == []
    pages = [s.query["page"] for s in server.requests if s.path == "/se/2.3/questions"]
    assert pages == ["1", "2", "3"]
    assert all(s.query["filter"] == "withbody" for s in server.requests)
    assert server.count("/se/2.3/answers/") == 3
    # The API and the data dump give the same records, so a bulk load and weekly runs deduplicate.
    dump = collect_source(
        SourceConfig(
            kind="stackexchange_dump", path=str(REPO / "data/sample/stackexchange/ai.stackexchange.com")
        )
    )
    assert {r.id: r.content_sha() for r in batch.records} == {r.id: r.content_sha() for r in dump.records}


def test_stackexchange_watermark_sends_min_and_dedupes_the_boundary(server):
    source = SourceConfig(kind="stackexchange_api", query="ai", options=_se(server))
    first = collect_source(source)
    known = {r.id: r.content_sha() for r in first.records}
    second = collect_source(source, known=known, watermark=first.watermark)
    last = server.requests[-2]
    assert last.path == "/se/2.3/questions" and int(last.query["min"]) > 0
    assert second.records == [] and second.skipped_unchanged == 1 and second.watermark == first.watermark


def test_stackexchange_backoff_is_obeyed(server):
    server.se_backoff = {1: 1}
    collect_source(SourceConfig(kind="stackexchange_api", query="ai", limit=25, options=_se(server)))
    calls = [s for s in server.requests if s.path == "/se/2.3/questions"]
    assert len(calls) == 2 and calls[1].at - calls[0].at >= 0.95


def test_stackexchange_429_and_503_burst_are_retried(server):
    server.script("/se/2.3/questions", [Canned(429, b"{}", {"Retry-After": "1"}), Canned(503), Canned(503)])
    batch = collect_source(SourceConfig(kind="stackexchange_api", query="ai", options=_se(server)))
    assert len(batch.records) == 60
    statuses = [s.status for s in server.requests if s.path == "/se/2.3/questions"]
    assert statuses[:4] == [429, 503, 503, 200]


def test_stackexchange_errors_end_the_source_clearly(server):
    server.script("/se/2.3/questions", [Canned(503)] * 4)
    with pytest.raises(CollectError, match=r"stackexchange_api /questions: gave up after 4 tries: HTTP 503"):
        collect_source(SourceConfig(kind="stackexchange_api", query="ai", options=_se(server)))
    server.script("/se/2.3/questions", [Canned(200, b'{"items": [ {"question_id": ')])
    with pytest.raises(CollectError, match="not JSON"):
        collect_source(SourceConfig(kind="stackexchange_api", query="ai", options=_se(server)))
    unknown_site = {"error_id": 400, "error_name": "bad_parameter", "error_message": "No site found for name"}
    server.script("/se/2.3/questions", [Canned(400, json.dumps(unknown_site).encode())])
    asked = server.count("/se/2.3/questions")
    with pytest.raises(SourceConfigError, match="bad_parameter: No site found"):
        collect_source(SourceConfig(kind="stackexchange_api", query="nowhere", options=_se(server)))
    assert server.count("/se/2.3/questions") == asked + 1  # a refused request is not repeated


def _throttle(message: str) -> Canned:
    body = {"error_id": 502, "error_name": "throttle_violation", "error_message": message}
    return Canned(400, json.dumps(body).encode())


def test_stackexchange_throttle_violation_waits_as_the_api_says(server):
    server.script("/se/2.3/questions", [_throttle("too many requests, more requests available in 1 seconds")])
    batch = collect_source(SourceConfig(kind="stackexchange_api", query="ai", options=_se(server)))
    assert len(batch.records) == 60
    calls = [s for s in server.requests if s.path == "/se/2.3/questions"]
    assert [c.status for c in calls[:2]] == [400, 200] and calls[1].at - calls[0].at >= 0.95


def test_stackexchange_throttle_violation_is_bounded_by_the_retry_policy(server):
    # Without a number the policy's backoff applies, for at most retry_attempts tries.
    source = SourceConfig(kind="stackexchange_api", query="ai", options=_se(server))
    server.script("/se/2.3/questions", [_throttle("too many requests from this IP")] * 2)
    assert len(collect_source(source).records) == 60
    server.script("/se/2.3/questions", [_throttle("too many requests from this IP")] * 4)
    with pytest.raises(CollectError, match="gave up after 4 tries: throttle_violation"):
        collect_source(source)
    # A wait longer than max_retry_after_s ends the source at once instead of blocking the run.
    server.script("/se/2.3/questions", [_throttle("more requests available in 82962 seconds")])
    started = time.monotonic()
    with pytest.raises(CollectError, match="asks to wait 82962s, longer than the allowed 600s"):
        collect_source(source)
    assert time.monotonic() - started < 5


def test_stackexchange_empty_result_is_not_an_error(server):
    future = "2030-01-01T00:00:00+00:00"
    batch = collect_source(
        SourceConfig(kind="stackexchange_api", query="ai", options=_se(server)), watermark=future
    )
    assert batch.records == [] and batch.rejected == [] and batch.watermark == future


def test_stackexchange_stops_at_the_quota_and_resumes_from_the_watermark(server):
    server.quota_remaining = 4  # enough for page 1 and its answers, then the quota is at the floor
    source = SourceConfig(kind="stackexchange_api", query="ai", options=_se(server, min_quota=3))
    first = collect_source(source)
    assert len(first.records) == 20
    server.quota_remaining = 10_000
    rest = collect_source(
        source, known={r.id: r.content_sha() for r in first.records}, watermark=first.watermark
    )
    assert len(rest.records) == 40
    assert {r.id for r in first.records} | {r.id for r in rest.records} == {
        f"stackexchange:ai.stackexchange.com:{q['question_id']}" for q in server.se_questions
    }


def test_stackexchange_missing_accepted_answer_is_rejected(server):
    server.se_answers.pop(next(iter(server.se_answers)))
    batch = collect_source(SourceConfig(kind="stackexchange_api", query="ai", options=_se(server)))
    assert len(batch.records) == 59
    assert len(batch.rejected) == 1 and "was not returned by /answers" in batch.rejected[0].reason


# --- OpenReview ----------------------------------------------------------------------------------


def _v2(server, **options) -> dict:
    return {"base_url": f"{server.url}/openreview2", "page_size": 4, **FAST_RETRY, **options}


def test_openreview_v2_through_openreview_py_matches_the_saved_files(server):
    batch = collect_source(
        SourceConfig(kind="openreview", query="ICLR.cc/2026/Conference", options=_v2(server))
    )
    offsets = [s.query["offset"] for s in server.requests if s.path == "/openreview2/notes"]
    assert offsets == ["0", "4", "8", "12"]
    assert all(s.query["details"] == "directReplies" for s in server.requests)
    assert all(s.query["invitation"] == "ICLR.cc/2026/Conference/-/Submission" for s in server.requests)
    files = collect_source(
        SourceConfig(kind="openreview_files", path=str(REPO / "data/sample/openreview/api_v2_iclr2026"))
    )
    assert len(batch.records) == 62 and batch.rejected == []
    assert {r.id: r.content_sha() for r in batch.records} == {r.id: r.content_sha() for r in files.records}
    assert batch.watermark == files.watermark
    withdrawn = {r.decision for r in batch.records if r.forum_id == "Ng6RfkOm6A"}
    assert withdrawn == {"Withdrawn"}
    again = collect_source(
        SourceConfig(kind="openreview", query="ICLR.cc/2026/Conference", options=_v2(server)),
        known={r.id: r.content_sha() for r in batch.records},
        watermark=batch.watermark,
    )
    assert again.records == [] and again.watermark == batch.watermark


def test_openreview_v2_forum_ids(server):
    source = SourceConfig(
        kind="openreview",
        query="ICLR.cc/2026/Conference",
        ids=["TRgEiJ5yN0", "missing00"],
        options=_v2(server),
    )
    batch = collect_source(source)
    assert {r.forum_id for r in batch.records} == {"TRgEiJ5yN0"} and len(batch.records) == 4
    assert [(r.item, r.reason) for r in batch.rejected] == [("openreview:missing00", "no such submission")]


def test_openreview_v1_through_the_old_client(server):
    options = {"base_url": f"{server.url}/openreview1", "api_version": "v1", **FAST_RETRY}
    batch = collect_source(
        SourceConfig(kind="openreview", query="NIPS.cc/2018/Workshop/CDNNRIA", options=options)
    )
    assert len(batch.records) == 4
    assert {(r.rating, r.confidence, r.decision) for r in batch.records} == {(4.0, 2.0, "accept")}
    assert server.requests[0].query["invitation"] == "NIPS.cc/2018/Workshop/CDNNRIA/-/Blind_Submission"


def test_openreview_transient_errors_are_retried(server):
    server.script("/openreview2/notes", [Canned(503), Canned(503), Canned(429, b"{}", {"Retry-After": "1"})])
    batch = collect_source(
        SourceConfig(kind="openreview", query="ICLR.cc/2026/Conference", options=_v2(server))
    )
    assert len(batch.records) == 62
    assert [s.status for s in server.requests][:4] == [503, 503, 429, 200]


def test_openreview_failures_are_clear_source_errors(server):
    server.script("/openreview2/notes", [Canned(503)] * 4)
    with pytest.raises(CollectError, match="openreview v2 ICLR.cc/2026/Conference/-/Submission offset 0"):
        collect_source(SourceConfig(kind="openreview", query="ICLR.cc/2026/Conference", options=_v2(server)))
    server.script("/openreview2/notes", [Canned(200, b'{"notes": [{"id": "x", "con')])
    with pytest.raises(CollectError, match="malformed JSON"):
        collect_source(SourceConfig(kind="openreview", query="ICLR.cc/2026/Conference", options=_v2(server)))


def test_openreview_unknown_venue_is_a_clear_config_error(server):
    with pytest.raises(SourceConfigError, match="'Nowhere.cc/2099' has no submission invitation"):
        collect_source(SourceConfig(kind="openreview", query="Nowhere.cc/2099", options=_v2(server)))
    # A v1 venue asked through API v2 is the same mistake, and the message says so.
    with pytest.raises(SourceConfigError, match="API v1 venue"):
        collect_source(SourceConfig(kind="openreview", query="NIPS.cc/2018/Workshop/CDNNRIA", options=_v2(server)))
    assert server.count("/openreview2/invitations") == 2


def test_openreview_known_venue_without_submissions_is_an_empty_result(server):
    # The invitation exists but lists nothing yet (a venue before its deadline): not an error.
    server.script("/openreview2/notes", [Canned(200, b'{"notes": [], "count": 0}')])
    batch = collect_source(SourceConfig(kind="openreview", query="ICLR.cc/2026/Conference", options=_v2(server)))
    assert batch.records == [] and batch.rejected == [] and batch.watermark is None


def test_openreview_a_failing_invitation_check_is_a_source_error_not_a_config_error(server):
    server.script("/openreview2/invitations", [Canned(500)] * 4)
    with pytest.raises(CollectError) as caught:
        collect_source(SourceConfig(kind="openreview", query="Nowhere.cc/2099", options=_v2(server)))
    assert not isinstance(caught.value, SourceConfigError) and "invitation" in str(caught.value)
