"""PostgreSQL: the profile-scorer export, ``profile_scores ⨝ user_profiles`` for one scoring model.

Values only ever travel as query parameters; table, schema and column names from the recipe are
composed with :mod:`psycopg.sql` identifiers, so a hostile name is a missing relation, never SQL.
Rows are streamed with a server-side (named) cursor, newest change first. The connection string
comes from settings (``DISTILLERY_POSTGRES_DSN``) or a Prefect Secret block named in the options; it
is scrubbed from every error message and never logged or written into a record.

NUL bytes: PostgreSQL ``text`` cannot hold U+0000 (the server refuses it on insert), so a NUL can only
reach this collector through a non-text column; such a row is rejected with a reason rather than
stripped, because a silently edited bio is a different training example from the one that was scored.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from tasks.collect.common import CollectError, SourceConfigError, logger, newest, utc
from tasks.collect.records import Profile, Rejected

DEFAULT_COLUMNS: dict[str, str | None] = {
    # profile_scores
    "score_id": "id",
    "profile_fk": "profile_id",
    "score": "score",
    "reason": "reason",
    "scored_by": "scored_by",
    "created_at": "created_at",
    "updated_at": "updated_at",  # None: the table has no update time; created_at is the watermark
    # user_profiles
    "profile_id": "id",
    "handle": "handle",
    "bio": "bio",
}


def resolve_dsn(options: dict[str, Any]) -> str:
    """The connection string: the Prefect Secret block ``options["secret_block"]`` or settings.

    Raises:
        SourceConfigError: no DSN configured, or no Secret block of that name.
        CollectError: the block cannot be loaded (the Prefect API failed). Messages never hold the secret.
    """
    block = options.get("secret_block")
    if block:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(str(block)).get())
        except Exception as exc:  # noqa: BLE001 - a missing block is a ValueError, else an HTTP error
            error = SourceConfigError if isinstance(exc, ValueError) else CollectError
            raise error(f"postgres: cannot load Secret block {block!r}: {type(exc).__name__}") from None
    from tasks.core.settings import get_settings

    dsn = get_settings().postgres_dsn
    if dsn is None or not dsn.get_secret_value():
        raise SourceConfigError(
            "postgres: no connection string; set DISTILLERY_POSTGRES_DSN or options.secret_block"
        )
    return dsn.get_secret_value()


def scrub(message: str, dsn: str) -> str:
    """``message`` with the DSN, its password and any URL credentials replaced by ``***``."""
    secrets = {dsn}
    try:
        from psycopg.conninfo import conninfo_to_dict

        password = conninfo_to_dict(dsn).get("password")
        if password:
            secrets.add(str(password))
    except Exception:  # noqa: BLE001, S110 - an unparsable DSN: scrub what the patterns below find
        pass
    match = re.search(r"password\s*=\s*'((?:[^'\\]|\\.)*)'|password\s*=\s*(\S+)", dsn)
    if match:
        secrets.add(match.group(1) or match.group(2))
    if dsn.startswith(("postgres://", "postgresql://")):
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            secrets.update({password, unquote(password)})
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "***")
    # userinfo of any URL-style DSN that appears (re-quoted or partially) in the message
    return re.sub(r"(postgres(?:ql)?://)[^@\s/]*@", r"\1***@", message)


def build_export_query(
    schema: str,
    scores_table: str,
    profiles_table: str,
    columns: dict[str, str | None],
    with_since: bool,
    with_limit: bool,
):
    """The export query as a :class:`psycopg.sql.Composed` (identifiers quoted, values as params)."""
    from psycopg import sql

    def col(alias: str, key: str) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(str(columns[key])))

    if columns.get("updated_at"):
        changed = sql.SQL("GREATEST({c}, COALESCE({u}, {c}))").format(
            c=col("s", "created_at"), u=col("s", "updated_at")
        )
    else:
        changed = col("s", "created_at")
    query = sql.SQL(
        "SELECT {sid} AS score_id, {handle} AS handle, {bio} AS bio, {score} AS score, {reason} AS reason, "
        "{scored_by} AS scored_by, {changed} AS changed_at "
        "FROM {scores} AS s JOIN {profiles} AS p ON {pid} = {fk} "
        "WHERE {scored_by} = %(scored_by)s"
    ).format(
        sid=col("s", "score_id"),
        handle=col("p", "handle"),
        bio=col("p", "bio"),
        score=col("s", "score"),
        reason=col("s", "reason"),
        scored_by=col("s", "scored_by"),
        changed=changed,
        scores=sql.Identifier(schema, scores_table),
        profiles=sql.Identifier(schema, profiles_table),
        pid=col("p", "profile_id"),
        fk=col("s", "profile_fk"),
    )
    if with_since:
        query += sql.SQL(" AND {changed} > %(since)s").format(changed=changed)
    query += sql.SQL(" ORDER BY changed_at DESC, score_id DESC")
    if with_limit:
        query += sql.SQL(" LIMIT %(limit)s")
    return query


def stream_rows(conn, query, params: dict[str, Any], batch_size: int = 500) -> Iterator[dict[str, Any]]:
    """Rows of ``query`` through a server-side cursor, ``batch_size`` rows per round trip."""
    from psycopg.rows import dict_row

    with conn.cursor(name=f"distillery_export_{uuid.uuid4().hex[:12]}", row_factory=dict_row) as cursor:
        cursor.itersize = batch_size
        cursor.execute(query, params)
        yield from cursor


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")
    return str(value)


def profile_from_row(row: dict[str, Any], source: str) -> Profile | Rejected:
    """One export row as a :class:`Profile`, or a :class:`Rejected` with the reason it cannot be used."""
    item = f"{source}:{row.get('score_id')}"
    try:
        handle, bio, reason = (
            _as_text(row.get("handle")),
            _as_text(row.get("bio")),
            _as_text(row.get("reason")),
        )
    except UnicodeDecodeError:
        return Rejected(source=source, item=item, reason="a text field is not valid UTF-8")
    for name, value in (("handle", handle), ("bio", bio), ("reason", reason)):
        if value is not None and "\x00" in value:
            return Rejected(source=source, item=item, reason=f"NUL byte in {name}")
    if not handle:
        return Rejected(source=source, item=item, reason="profile without a handle")
    score = row.get("score")
    changed = row.get("changed_at")
    return Profile(
        id=item,
        source=source,
        updated=utc(changed) if isinstance(changed, datetime) else None,
        handle=handle,
        bio=bio or "",
        score=float(score) if isinstance(score, (int, float, Decimal)) else None,
        reason=reason,
        scored_by=_as_text(row.get("scored_by")),
    )


def collect_profiles(
    options: dict[str, Any], scored_by: str | None, limit: int | None = None, since: datetime | None = None
) -> tuple[list[Profile], list[Rejected], datetime | None]:
    """Export the profile scores one API model gave, newest first, changed after ``since``.

    Args:
        options: ``schema`` (default public), ``scores_table`` (profile_scores), ``profiles_table``
            (user_profiles), ``columns`` (overrides of :data:`DEFAULT_COLUMNS`), ``secret_block``,
            ``batch_size``, ``connect_timeout_s``.
        scored_by: The model whose scores are exported (required).
        limit: At most this many rows (the newest).
        since: Watermark: only scores created or updated after it.

    Returns:
        Profiles, rejected rows, and the newest change seen; None when ``limit`` cut the export
        (newest-first order means older rows were not seen, so the watermark must not move).

    Raises:
        SourceConfigError: no ``scored_by``, no DSN, or a table, column or privilege the recipe names
            wrong (the server's ProgrammingError).
        CollectError: other database errors. Messages have the connection string scrubbed.
    """
    import psycopg

    if not scored_by:
        raise SourceConfigError("postgres: options.scored_by (or query) must name the scoring model")
    schema = str(options.get("schema", "public"))
    scores_table = str(options.get("scores_table", "profile_scores"))
    profiles_table = str(options.get("profiles_table", "user_profiles"))
    columns = {**DEFAULT_COLUMNS, **(options.get("columns") or {})}
    source = f"postgres:{scores_table}"
    query = build_export_query(
        schema, scores_table, profiles_table, columns, since is not None, limit is not None
    )
    params: dict[str, Any] = {"scored_by": scored_by}
    if since is not None:
        params["since"] = since
    if limit is not None:
        params["limit"] = limit + 1  # one more than asked tells whether the limit cut the export
    dsn = resolve_dsn(options)
    profiles: list[Profile] = []
    rejected: list[Rejected] = []
    newest_seen: datetime | None = None
    cut = False
    logger.info("postgres: exporting %s scored_by=%r since=%s", source, scored_by, since)
    try:
        with psycopg.connect(
            dsn,
            connect_timeout=int(options.get("connect_timeout_s", 10)),
            application_name="distillery-collect",
        ) as conn:
            for row in stream_rows(conn, query, params, int(options.get("batch_size", 500))):
                if limit is not None and len(profiles) + len(rejected) >= limit:
                    cut = True
                    break
                changed = row.get("changed_at")
                if isinstance(changed, datetime):
                    newest_seen = newest(newest_seen, utc(changed))
                result = profile_from_row(row, source)
                (rejected if isinstance(result, Rejected) else profiles).append(result)
    except psycopg.Error as exc:
        # An unknown table or column, or a missing privilege, stays wrong until the recipe changes.
        error = SourceConfigError if isinstance(exc, psycopg.ProgrammingError) else CollectError
        # `from None`: the original exception (and its context) may quote the connection string.
        raise error(f"postgres {source}: {scrub(f'{type(exc).__name__}: {exc}', dsn)}") from None
    return profiles, rejected, (None if cut else newest_seen)
