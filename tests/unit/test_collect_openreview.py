"""OpenReview v1/v2 and PeerRead normalization on the real saved notes (no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.collect.common import CollectError
from tasks.collect.openreview import (
    decision_of,
    parse_rating,
    read_openreview_files,
    read_peerread,
    reviews_from_forum,
    unwrap,
)

REPO = Path(__file__).resolve().parents[2]
V2_DIR = REPO / "data" / "sample" / "openreview" / "api_v2_iclr2026"
V1_FILE = (
    REPO
    / "tests"
    / "fixtures"
    / "collect"
    / "openreview"
    / "api_v1_nips2018_workshop"
    / "example_output.json"
)
V1_CONTENT = REPO / "tests" / "fixtures" / "collect" / "openreview" / "api_v1_iclr_review_content"
PEERREAD = REPO / "data" / "sample" / "peerread" / "neurips_2023"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("8: Top 50% of accepted papers, clear accept", 8.0),
        ("1: Reject", 1.0),
        ({"value": 6}, 6.0),
        (4, 4.0),
        ("6.5", 6.5),
        ("Accept", None),
        (None, None),
        ({"value": None}, None),
        (True, None),
    ],
)
def test_parse_rating(value, expected):
    assert parse_rating(value) == expected


def test_every_real_v1_rating_and_confidence_string_parses():
    files = sorted(V1_CONTENT.rglob("*.json"))
    assert len(files) == 61
    for path in files:
        content = json.loads(path.read_text(encoding="utf-8"))
        rating = parse_rating(content["rating"])
        assert rating is not None and 1 <= rating <= 10, (path, content["rating"])
        assert content["rating"].startswith(f"{int(rating)}:")
        if "confidence" in content:
            assert 1 <= parse_rating(content["confidence"]) <= 5


def test_unwrap_handles_both_api_shapes():
    assert unwrap({"value": "x"}) == "x"
    assert unwrap("x") == "x"
    assert unwrap({"other": 1}) == {"other": 1}


def _tracker(forum: str) -> dict:
    return json.loads((V2_DIR / f"{forum}.json").read_text(encoding="utf-8"))


def test_v2_official_reviews_become_reviews_and_comments_do_not():
    page = _tracker("TRgEiJ5yN0")  # 4 official reviews + 1 official comment
    reviews, rejected = reviews_from_forum(page, page["replies"], "openreview:ICLR.cc/2026/Conference")
    assert rejected == []
    assert len(reviews) == 4
    review = reviews[0]
    assert review.forum_id == "TRgEiJ5yN0"
    assert review.paper_title == "Beyond RLHF: A Theoretical Framework of Alignment as Distribution Learning"
    assert review.paper_abstract
    assert all(r.summary and r.strengths and r.weaknesses and r.questions for r in reviews)
    assert all(isinstance(r.rating, float) and isinstance(r.confidence, float) for r in reviews)
    assert all(r.decision is None for r in reviews)  # no decision yet in the reviewing period
    raw = {n["id"]: n for n in page["replies"]}
    for r in reviews:
        note = raw[r.id.removeprefix("openreview:")]
        assert r.rating == float(note["content"]["rating"]["value"])
        assert r.updated == datetime.fromtimestamp(note["mdate"] / 1000, tz=UTC)


def test_withdrawn_submission_has_that_decision():
    page = _tracker("Ng6RfkOm6A")
    reviews, _ = reviews_from_forum(page, page["replies"], "s")
    assert len(reviews) == 4 and {r.decision for r in reviews} == {"Withdrawn"}
    # The Withdrawal note alone says so too, without the tracker's own flag.
    without_flag = {k: v for k, v in page.items() if k != "withdrawn"}
    assert decision_of(without_flag, page["replies"]) == "Withdrawn"


def test_a_review_seen_twice_keeps_its_latest_version():
    page = _tracker("TRgEiJ5yN0")
    first = next(n for n in page["replies"] if any(i.endswith("Official_Review") for i in n["invitations"]))
    older = json.loads(json.dumps(first))
    older["mdate"] = first["mdate"] - 1000
    older["content"]["summary"]["value"] = "an earlier draft"
    reviews, _ = reviews_from_forum(page, [older, *page["replies"]], "s")
    chosen = next(r for r in reviews if r.id == f"openreview:{first['id']}")
    assert chosen.summary == first["content"]["summary"]["value"].strip()
    assert len(reviews) == 4


def test_read_all_saved_v2_forums():
    reviews, rejected, newest = read_openreview_files(V2_DIR)
    assert rejected == []
    official = {
        n["id"]
        for p in V2_DIR.glob("*.json")
        for n in json.loads(p.read_text())["replies"]
        if any(i.endswith("/-/Official_Review") for i in n["invitations"])
    }
    assert {r.id.removeprefix("openreview:") for r in reviews} == official
    assert len(reviews) == len(official) == 62
    assert {r.source for r in reviews} == {"openreview:ICLR.cc/2026/Conference"}
    assert newest == max(r.updated for r in reviews)
    later, _, _ = read_openreview_files(V2_DIR, since=newest)
    assert later == []
    assert read_openreview_files(V2_DIR, limit=3)[2] is None  # a cut listing does not move the watermark


def test_v1_notes_are_normalized_with_decision_and_parsed_scores():
    reviews, rejected, _ = read_openreview_files(V1_FILE)
    assert rejected == []
    assert len(reviews) == 4
    assert {r.source for r in reviews} == {"openreview:NIPS.cc/2018/Workshop/CDNNRIA"}
    assert {r.decision for r in reviews} == {"accept"}
    assert {r.rating for r in reviews} == {4.0} and {r.confidence for r in reviews} == {2.0}
    assert {r.paper_title for r in reviews} == {"Targeted Dropout", "Rethinking the Value of Network Pruning"}
    assert all(r.summary for r in reviews)  # v1 free-text review lands in summary


def test_unreadable_files_are_rejected_not_fatal(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"something": "else"}')
    (tmp_path / "good.json").write_text((V2_DIR / "TRgEiJ5yN0.json").read_text())
    reviews, rejected, _ = read_openreview_files(tmp_path)
    assert len(reviews) == 4
    assert sorted(r.item for r in rejected) == ["bad.json", "other.json"]
    assert all(r.reason.startswith("unreadable") for r in rejected)
    with pytest.raises(CollectError, match="does not exist"):
        read_openreview_files(tmp_path / "absent")


def test_peerread_reviews_are_split_into_their_parts():
    reviews, rejected, newest = read_peerread(PEERREAD)
    files = sorted(PEERREAD.glob("*.json"))
    expected = sum(1 for p in files for e in json.loads(p.read_text())["reviews"] if not e["IS_META_REVIEW"])
    assert rejected == [] and len(reviews) == expected == 133
    assert all(r.summary and r.strengths and r.weaknesses and r.questions for r in reviews)
    assert all(not r.summary.startswith("SUMMARY") and "STRENGTHS:" not in r.summary for r in reviews)
    assert all(r.rating is not None and r.confidence is not None for r in reviews)
    decisions = {r.forum_id: r.decision for r in reviews}
    assert decisions["0QpwcDPiHT"] == "Reject"
    assert set(decisions.values()) <= {"Reject", "Accept (poster)", "Accept (spotlight)", "Accept (oral)"}
    assert sum(1 for d in decisions.values() if d == "Reject") == 10
    assert newest == max(r.updated for r in reviews)


def test_peerread_bad_file_is_rejected(tmp_path):
    (tmp_path / "x.json").write_text('{"title": "no reviews key"}')
    reviews, rejected, _ = read_peerread(tmp_path)
    assert reviews == [] and rejected[0].item == "x.json" and "KeyError" in rejected[0].reason
