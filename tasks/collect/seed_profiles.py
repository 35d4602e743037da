"""Seed the profile-scorer source database from real public records, labelled by the teacher.

``python -m tasks.collect.seed_profiles [--dsn DSN] [--limit N]`` creates the database when it is
missing, creates ``user_profiles`` and ``profile_scores`` (the layout :mod:`tasks.collect.postgres`
exports), and fills them idempotently:

* profiles: every Stack Exchange user who owns a post in the sample dumps (``data/sample/stackexchange``:
  ai.stackexchange.com and Cross Validated), aggregated from ``Posts.xml`` by ``OwnerUserId``: the
  questions they asked and answers they wrote (titles, tags, scores, accepted answers, an excerpt of
  their best answer). The handle is ``<site>-user-<id>`` (``ai-user-8``).
* scores: the teacher (the recipe's API model; here the embedded one by default) scores each profile
  from 0 to 1 as a candidate expert reviewer for ML questions, with a one-sentence reason, stored with
  ``scored_by`` = the teacher's name. A profile already scored by that model with the same bio is not
  sent again; a changed bio is re-scored and the row updated (``updated_at``), so a re-run changes
  nothing and the collector's watermark only moves for real changes.

The DSN defaults to ``DISTILLERY_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/distillery_profiles``.
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/distillery_profiles"
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample" / "stackexchange"
DUMPS = (("ai", SAMPLE_DIR / "ai.stackexchange.com" / "Posts.xml"),
         ("stats", SAMPLE_DIR / "stats.stackexchange.com" / "Posts_sample.xml"))

SCHEMA_SQL = (
    ("CREATE TABLE IF NOT EXISTS user_profiles ("
     " id bigserial PRIMARY KEY, handle text NOT NULL UNIQUE, bio text NOT NULL,"
     " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz)"),
    ("CREATE TABLE IF NOT EXISTS profile_scores ("
     " id bigserial PRIMARY KEY, profile_id bigint NOT NULL REFERENCES user_profiles(id) ON DELETE CASCADE,"
     " score numeric NOT NULL CHECK (score >= 0 AND score <= 1), reason text, scored_by text NOT NULL,"
     " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz,"
     " UNIQUE (profile_id, scored_by))"),
)

LABEL_SYSTEM = (
    "You assess community members as expert reviewers for machine-learning and statistics questions. "
    "Score the profile from 0 to 10: 10 means strong, proven expertise (many well-received, accepted answers "
    "on technical topics); 5 means some relevant activity; 0 means no evidence of expertise (only a question "
    "or two, or low-scored posts). Reply in JSON with a one-sentence reason and the score."
)


@dataclass
class Activity:
    """One user's posts in one dump."""

    site: str
    user_id: str
    questions: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ProfileSeed:
    handle: str
    bio: str


class ProfileLabel(BaseModel):
    """The teacher's score of one profile, in tenths: an integer keeps a grammar-constrained model in
    range (llama.cpp's grammar enforces an enum, not numeric bounds); the stored score is ``score / 10``."""

    reason: str = Field(description="One sentence: why this score.", max_length=200)
    score: Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] = Field(
        description="From 0 (no evidence of expertise) to 10 (strong, proven expertise).")


def parse_activity(path: Path, site: str) -> dict[str, Activity]:
    """Questions and answers per ``OwnerUserId`` of one ``Posts.xml`` (posts without an owner are skipped)."""
    from tasks.collect.common import html_to_markdown
    from tasks.collect.stackexchange import parse_tags

    rows = [row.attrib for row in ET.parse(path).getroot().iter("row")]
    accepted = {row["AcceptedAnswerId"] for row in rows if row.get("AcceptedAnswerId")}
    titles = {row["Id"]: row.get("Title", "") for row in rows if row.get("PostTypeId") == "1"}
    users: dict[str, Activity] = {}
    for row in rows:
        owner = row.get("OwnerUserId")
        if not owner or row.get("PostTypeId") not in ("1", "2"):
            continue
        activity = users.setdefault(owner, Activity(site=site, user_id=owner))
        score = int(row.get("Score") or 0)
        if row["PostTypeId"] == "1":
            activity.questions.append({"id": row["Id"], "title": row.get("Title", ""), "score": score,
                                       "tags": parse_tags(row.get("Tags"))})
        else:
            activity.answers.append({"id": row["Id"], "score": score, "accepted": row["Id"] in accepted,
                                     "question": titles.get(row.get("ParentId", ""), ""),
                                     "body": " ".join(html_to_markdown(row.get("Body", "")).split())})
    return users


def handle_of(site: str, user_id: str) -> str:
    return f"{site}-user-{user_id}"


def profile_bio(activity: Activity, site_domain: str, excerpt_chars: int = 280) -> str:
    """A plain-text profile of one user's activity (deterministic)."""
    answers, questions = activity.answers, activity.questions
    accepted = sum(a["accepted"] for a in answers)
    total = sum(p["score"] for p in answers + questions)
    tags: dict[str, int] = {}
    for question in questions:
        for tag in question["tags"]:
            tags[tag] = tags.get(tag, 0) + 1
    lines = [(f"Member of {site_domain}. Asked {len(questions)} question(s); wrote {len(answers)} answer(s), "
              f"{accepted} accepted. Total score of their posts: {total}.")]
    if tags:
        top = sorted(tags.items(), key=lambda item: (-item[1], item[0]))[:5]
        lines.append("Tags of their questions: " + ", ".join(tag for tag, _ in top) + ".")
    for question in sorted(questions, key=lambda q: (-q["score"], q["id"]))[:3]:
        lines.append(f"Asked: \"{question['title']}\" (score {question['score']}).")
    for answer in sorted(answers, key=lambda a: (-a["score"], a["id"]))[:3]:
        accepted_note = ", accepted" if answer["accepted"] else ""
        lines.append(f"Answered: \"{answer['question']}\" (score {answer['score']}{accepted_note}).")
    if answers:
        best = max(answers, key=lambda a: (a["score"], a["accepted"], a["id"]))
        excerpt = best["body"] if len(best["body"]) <= excerpt_chars else best["body"][: excerpt_chars].rsplit(" ", 1)[0] + " …"
        lines.append(f"Excerpt of their best answer: {excerpt}")
    return "\n".join(lines)


def build_profiles(dumps: tuple[tuple[str, Path], ...] = DUMPS) -> list[ProfileSeed]:
    """Every post owner of the sample dumps as a profile, in a stable order."""
    profiles = []
    for site, path in dumps:
        domain = path.parent.name
        for user_id, activity in parse_activity(path, site).items():
            profiles.append(ProfileSeed(handle=handle_of(site, user_id), bio=profile_bio(activity, domain)))
    return sorted(profiles, key=lambda p: p.handle)


def label_messages(profile: ProfileSeed):
    from tasks.teacher.base import messages

    return messages(("system", LABEL_SYSTEM), ("user", f"Handle: {profile.handle}\n\nProfile:\n{profile.bio}"))


def label_profiles(profiles: list[ProfileSeed], teacher: Any, max_tokens: int = 160, seed: int = 0,
                   max_repairs: int = 1) -> tuple[dict[str, ProfileLabel], dict[str, str]]:
    """The teacher's label of each profile (temperature 0); profiles whose output never validated, with why."""
    def one(profile: ProfileSeed) -> tuple[str, ProfileLabel | None, str | None]:
        label, reason = teacher.structured(label_messages(profile), ProfileLabel, temperature=0.0,
                                           max_tokens=max_tokens, seed=seed, max_repairs=max_repairs)
        return profile.handle, label, reason

    labels, failed = {}, {}
    for handle, label, reason in teacher.map(one, profiles, concurrency=1, desc="label profiles"):
        if label is None:
            failed[handle] = reason or "invalid output"
        else:
            labels[handle] = label
    return labels, failed


def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it does not exist (connecting to ``postgres`` on the same server).

    Returns whether it was created.
    """
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    name = params.get("dbname") or "postgres"
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created by a concurrent seeding
    return True


def existing_scores(conn, scored_by: str) -> dict[str, tuple[str, float]]:
    """handle -> (bio, score) of the profiles this model already scored."""
    rows = conn.execute(
        "SELECT p.handle, p.bio, s.score FROM user_profiles p JOIN profile_scores s ON s.profile_id = p.id "
        "WHERE s.scored_by = %s", (scored_by,)).fetchall()
    return {handle: (bio, float(score)) for handle, bio, score in rows}


def upsert(conn, profiles: list[ProfileSeed], labels: dict[str, ProfileLabel], scored_by: str) -> dict[str, int]:
    """Insert or update profiles and their scores; rows whose content is unchanged are left alone."""
    counts = {"profiles_written": 0, "scores_written": 0}
    for profile in profiles:
        row = conn.execute(
            "INSERT INTO user_profiles (handle, bio) VALUES (%s, %s) "
            "ON CONFLICT (handle) DO UPDATE SET bio = EXCLUDED.bio, updated_at = now() "
            "WHERE user_profiles.bio IS DISTINCT FROM EXCLUDED.bio RETURNING id", (profile.handle, profile.bio)).fetchone()
        counts["profiles_written"] += row is not None
        label = labels.get(profile.handle)
        if label is None:
            continue
        profile_id = conn.execute("SELECT id FROM user_profiles WHERE handle = %s", (profile.handle,)).fetchone()[0]
        written = conn.execute(
            "INSERT INTO profile_scores (profile_id, score, reason, scored_by) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (profile_id, scored_by) DO UPDATE SET score = EXCLUDED.score, reason = EXCLUDED.reason, "
            "updated_at = now() WHERE profile_scores.score IS DISTINCT FROM EXCLUDED.score "
            "OR profile_scores.reason IS DISTINCT FROM EXCLUDED.reason RETURNING id",
            (profile_id, label.score / 10, label.reason, scored_by)).fetchone()
        counts["scores_written"] += written is not None
    return counts


def seed(dsn: str, limit: int | None = None, teacher_config: Any = None) -> dict[str, Any]:
    """Create and fill the tables; label only profiles this model has not scored with their current bio."""
    import psycopg

    from tasks.core.recipe import TeacherConfig
    from tasks.teacher.teacher import get_teacher

    teacher_config = teacher_config or TeacherConfig(max_tokens=160)
    created = ensure_database(dsn)
    profiles = build_profiles()[:limit] if limit else build_profiles()
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        for statement in SCHEMA_SQL:
            conn.execute(statement)
        conn.commit()
        teacher = get_teacher(teacher_config)
        scored_by = teacher.name
        done = existing_scores(conn, scored_by)
        todo = [p for p in profiles if done.get(p.handle, (None,))[0] != p.bio]
        labels, failed = label_profiles(todo, teacher, teacher_config.max_tokens, teacher_config.seed,
                                        teacher_config.max_repairs) if todo else ({}, {})
        counts = upsert(conn, profiles, labels, scored_by)
        conn.commit()
        total = conn.execute("SELECT count(*) FROM profile_scores WHERE scored_by = %s", (scored_by,)).fetchone()[0]
    return {"database_created": created, "profiles": len(profiles), "attempted": len(todo), "labelled_now": len(labels),
            "label_failures": failed, "scored_by": scored_by, "scores_in_table": total, **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.collect.seed_profiles", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DISTILLERY_POSTGRES_DSN") or DEFAULT_DSN,
                        help="target database (created if missing); default $DISTILLERY_POSTGRES_DSN or " + DEFAULT_DSN)
    parser.add_argument("--limit", type=int, default=None, help="seed only the first N profiles (by handle)")
    args = parser.parse_args(argv)
    import json

    from tasks.collect.postgres import scrub

    try:
        result = seed(args.dsn, args.limit)
    except Exception as exc:  # noqa: BLE001 - report without the connection string
        print(f"seed_profiles failed: {scrub(f'{type(exc).__name__}: {exc}', args.dsn)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
