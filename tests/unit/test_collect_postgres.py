"""PostgreSQL collector: pure parts (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tasks.collect.common import CollectError
from tasks.collect.postgres import DEFAULT_COLUMNS, build_export_query, profile_from_row, resolve_dsn, scrub
from tasks.collect.records import Profile, Rejected


def _row(**overrides):
    row = {
        "score_id": 7,
        "handle": "@ada",
        "bio": "Mathematician.",
        "score": Decimal("0.875"),
        "reason": "clear",
        "scored_by": "gpt-4o",
        "changed_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    row.update(overrides)
    return row


def test_a_row_becomes_a_profile():
    profile = profile_from_row(_row(), "postgres:profile_scores")
    assert profile == Profile(
        id="postgres:profile_scores:7",
        source="postgres:profile_scores",
        updated=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        handle="@ada",
        bio="Mathematician.",
        score=0.875,
        reason="clear",
        scored_by="gpt-4o",
    )


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"bio": "evil\x00bio"}, "NUL byte in bio"),
        ({"handle": b"@a\x00"}, "NUL byte in handle"),
        ({"reason": b"\xff\xfe"}, "a text field is not valid UTF-8"),
        ({"handle": ""}, "profile without a handle"),
    ],
)
def test_unusable_rows_are_rejected_with_a_reason(overrides, reason):
    result = profile_from_row(_row(**overrides), "postgres:profile_scores")
    assert result == Rejected(
        source="postgres:profile_scores", item="postgres:profile_scores:7", reason=reason
    )


def test_identifiers_are_quoted_and_values_are_parameters():
    hostile = 'profile_scores"; DROP TABLE users; --'
    query = build_export_query("public", hostile, "user_profiles", dict(DEFAULT_COLUMNS), True, True)
    text = query.as_string(None)
    assert '"public"."profile_scores""; DROP TABLE users; --"' in text
    assert "%(scored_by)s" in text and "%(since)s" in text and "%(limit)s" in text
    assert "ORDER BY changed_at DESC" in text
    no_update = build_export_query("s", "a", "b", {**DEFAULT_COLUMNS, "updated_at": None}, False, False)
    assert "GREATEST" not in no_update.as_string(None) and "%(since)s" not in no_update.as_string(None)


@pytest.mark.parametrize(
    "dsn, message, secret",
    [
        (
            "postgresql://bob:hunter2@db:5432/x",
            "could not connect to postgresql://bob:hunter2@db:5432/x",
            "hunter2",
        ),
        ("postgresql://bob:s3cr%zzet@db/x", 'invalid percent-encoded token: "s3cr%zzet"', "s3cr%zzet"),
        ("host=db password='p w d' user=bob", "bad conninfo host=db password='p w d' user=bob", "p w d"),
        ("host=db password=plain user=bob", "FATAL: password authentication failed; got plain", "plain"),
    ],
)
def test_scrub_removes_the_dsn_and_password(dsn, message, secret):
    cleaned = scrub(message, dsn)
    assert secret not in cleaned and "***" in cleaned


def test_missing_dsn_is_a_clear_error(monkeypatch, tmp_path):
    from tasks.core.settings import get_settings

    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    monkeypatch.delenv("DISTILLERY_POSTGRES_DSN", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(CollectError, match="no connection string"):
            resolve_dsn({})
    finally:
        get_settings.cache_clear()
