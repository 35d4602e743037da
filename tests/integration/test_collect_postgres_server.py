"""PostgreSQL collector against the real local server: schema and rows made (and dropped) per test."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tasks.collect.common import CollectError, SourceConfigError
from tasks.collect.postgres import DEFAULT_COLUMNS, build_export_query, collect_profiles, stream_rows
from tasks.collect.records import Profile
from tasks.collect.sources import collect_source
from tasks.core.recipe import SourceConfig

pytestmark = pytest.mark.integration

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOSTILE = [
    ("o'brien", 'It\'s "quoted" and back\\slashed'),
    ("'; DROP TABLE sentinel; --", "'; DROP TABLE sentinel; --"),
    ("emoji🧪", "Researcher 🔬🧬 with accents: naïve café, 中文, עברית"),
    ("bigbio", "x" * (1024 * 1024)),
]


def _connect():
    import psycopg

    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")


@pytest.fixture()
def db(monkeypatch, tmp_path):
    """A fresh schema with the two tables and a sentinel table; dropped afterwards."""
    from psycopg import sql

    from tasks.core.settings import get_settings

    schema = f"collect_test_{uuid.uuid4().hex[:10]}"
    conn = _connect()
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {}.user_profiles (id bigserial PRIMARY KEY, handle text NOT NULL, bio text)"
        ).format(ident)
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE {}.profile_scores (id bigserial PRIMARY KEY, "
            "profile_id bigint REFERENCES {}.user_profiles(id), score numeric, reason text, "
            "scored_by text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz)"
        ).format(ident, ident)
    )
    conn.execute(sql.SQL("CREATE TABLE {}.sentinel (x int)").format(ident))
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_POSTGRES_DSN", ADMIN_DSN)
    get_settings.cache_clear()
    try:
        yield Db(conn, schema)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident))
        conn.close()
        get_settings.cache_clear()


class Db:
    def __init__(self, conn, schema: str):
        self.conn, self.schema = conn, schema

    def add(
        self,
        handle: str,
        bio: str,
        score: float,
        scored_by: str,
        created: datetime,
        updated: datetime | None = None,
    ) -> int:
        from psycopg import sql

        ident = sql.Identifier(self.schema)
        (pid,) = self.conn.execute(
            sql.SQL("INSERT INTO {}.user_profiles (handle, bio) VALUES (%s, %s) RETURNING id").format(ident),
            (handle, bio),
        ).fetchone()
        (sid,) = self.conn.execute(
            sql.SQL(
                "INSERT INTO {}.profile_scores "
                "(profile_id, score, reason, scored_by, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
            ).format(ident),
            (pid, score, f"reason for {handle}", scored_by, created, updated),
        ).fetchone()
        return sid

    def sentinel_exists(self) -> bool:
        return self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.sentinel",)
        ).fetchone()[0]

    def source(self, **options) -> SourceConfig:
        return SourceConfig(kind="postgres", query="gpt-4o", options={"schema": self.schema, **options})


def test_export_is_newest_first_filtered_and_incremental(db):
    for i in range(3):
        db.add(f"user{i}", f"bio {i}", 0.5 + i / 10, "gpt-4o", T0 + timedelta(minutes=i))
    db.add("other", "scored by another model", 0.1, "claude", T0 + timedelta(hours=1))
    first = collect_source(db.source())
    assert [r.handle for r in first.records] == ["user2", "user1", "user0"]
    assert all(isinstance(r, Profile) and r.scored_by == "gpt-4o" for r in first.records)
    assert first.watermark == (T0 + timedelta(minutes=2)).isoformat()
    known = {r.id: r.content_sha() for r in first.records}

    # New rows, and an existing score updated: only those come back on the next run.
    db.add("user3", "bio 3", 0.9, "gpt-4o", T0 + timedelta(minutes=10))
    db.add("user4", "bio 4", 0.95, "gpt-4o", T0 + timedelta(minutes=11))
    db.conn.execute(
        f'UPDATE "{db.schema}".profile_scores SET score = 0.99, updated_at = %s '
        f'WHERE profile_id = (SELECT id FROM "{db.schema}".user_profiles WHERE handle = %s)',
        (T0 + timedelta(minutes=12), "user0"),
    )
    second = collect_source(db.source(), known=known, watermark=first.watermark)
    assert [r.handle for r in second.records] == ["user0", "user4", "user3"]
    assert second.records[0].score == 0.99
    assert second.watermark == (T0 + timedelta(minutes=12)).isoformat()
    third = collect_source(db.source(), known=known, watermark=second.watermark)
    assert third.records == [] and third.watermark == second.watermark


def test_hostile_values_come_back_unchanged_and_nothing_runs(db):
    for i, (handle, bio) in enumerate(HOSTILE):
        db.add(handle, bio, 0.7, "gpt-4o", T0 + timedelta(seconds=i))
    batch = collect_source(db.source())
    got = {r.handle: r.bio for r in batch.records}
    assert got == dict(HOSTILE)
    assert len(got["bigbio"]) == 1024 * 1024
    assert db.sentinel_exists()
    # A hostile filter value is only a value.
    hostile_filter = SourceConfig(
        kind="postgres",
        query=f"x' OR '1'='1'; DROP TABLE {db.schema}.sentinel; --",
        options={"schema": db.schema},
    )
    assert collect_source(hostile_filter).records == []
    assert db.sentinel_exists()


def test_hostile_identifiers_are_names_not_sql(db):
    db.add("a", "b", 0.5, "gpt-4o", T0)
    bad = db.source(scores_table=f'profile_scores" ; DROP TABLE {db.schema}.sentinel; --')
    with pytest.raises(CollectError, match="UndefinedTable"):
        collect_source(bad)
    assert db.sentinel_exists()


def test_a_table_or_column_the_database_lacks_is_a_config_error(db):
    db.add("a", "b", 0.5, "gpt-4o", T0)
    with pytest.raises(SourceConfigError, match="UndefinedTable"):
        collect_source(db.source(scores_table="profile_scorez"))
    with pytest.raises(SourceConfigError, match="UndefinedColumn"):
        collect_source(db.source(columns={"bio": "biography"}))


def test_postgres_text_refuses_nul_so_it_never_reaches_the_collector(db):
    import psycopg

    with pytest.raises(psycopg.DataError):
        db.add("nul", "before\x00after", 0.5, "gpt-4o", T0)
    # Nothing half-written: the export is empty, not a stripped bio.
    assert collect_source(db.source()).records == []


def test_rows_stream_through_a_server_side_cursor(db):
    import psycopg

    for i in range(5):
        db.add(f"u{i}", "b", 0.5, "gpt-4o", T0 + timedelta(seconds=i))
    query = build_export_query(
        db.schema, "profile_scores", "user_profiles", dict(DEFAULT_COLUMNS), False, False
    )
    with psycopg.connect(ADMIN_DSN) as conn:
        rows = stream_rows(conn, query, {"scored_by": "gpt-4o"}, batch_size=2)
        first = next(rows)
        cursors = conn.execute("SELECT name FROM pg_cursors WHERE name LIKE 'distillery_export_%'").fetchall()
        assert len(cursors) == 1  # a named (server-side) cursor is open while rows stream
        assert first["handle"] == "u4" and [r["handle"] for r in rows] == ["u3", "u2", "u1", "u0"]


def test_limit_takes_the_newest_and_holds_the_watermark(db):
    for i in range(4):
        db.add(f"u{i}", "b", 0.5, "gpt-4o", T0 + timedelta(seconds=i))
    profiles, rejected, mark = collect_profiles({"schema": db.schema}, "gpt-4o", limit=2)
    assert [p.handle for p in profiles] == ["u3", "u2"] and rejected == [] and mark is None
    profiles, _, mark = collect_profiles({"schema": db.schema}, "gpt-4o", limit=4)
    assert len(profiles) == 4 and mark == T0 + timedelta(seconds=3)


def test_the_connection_string_never_appears_in_errors_or_logs(monkeypatch, caplog, tmp_path):
    from tasks.core.settings import get_settings

    secret_dsn = "postgresql://postgres:Sup3rS3cretPw@127.0.0.1:1/test"
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_POSTGRES_DSN", secret_dsn)
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CollectError) as caught:
            collect_source(SourceConfig(kind="postgres", query="gpt-4o", options={"connect_timeout_s": 2}))
        monkeypatch.setenv("DISTILLERY_POSTGRES_DSN", "postgresql://postgres:Sup3r%zzS3cret@127.0.0.1/test")
        get_settings.cache_clear()
        with pytest.raises(CollectError) as malformed:
            collect_source(SourceConfig(kind="postgres", query="gpt-4o"))
    finally:
        get_settings.cache_clear()
    for error in (caught.value, malformed.value):
        text = str(error)
        assert "Sup3r" not in text and "S3cret" not in text
        assert error.__cause__ is None and error.__suppress_context__  # the original message is not chained
    assert "Sup3r" not in caplog.text
