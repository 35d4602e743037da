"""profile-scorer end to end on CPU with the real small model and the real PostgreSQL: seed a fresh
database with `python -m tasks.collect.seed_profiles` (Stack Exchange users from the sample, scored by
the teacher), then `python -m flows.full --recipe profile-scorer --profile smoke` against it.

The same run is the canary drill of the whole DAG: the database password and the teacher's API key
are unique canaries (the judge of the validate stage calls the FAKE OpenAI-compatible server of
tests/fakes with that key, which the server checks), Prefect logs at DEBUG, and afterwards neither
canary may appear in any byte the run left: stdout, stderr, Prefect's database and logs, the teacher
cache, every artifact in the store (datasets, reports, the GGUF and its metadata)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.runner import STAGES, smoke, statuses
from tests.fakes.openai_server import OpenAIServer
from tests.fakes.prefect_server import user_env

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")


@pytest.fixture()
def database(tmp_path):
    from psycopg import sql

    name = f"distillery_profiles_e2e_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def _seed(home: Path, dsn: str) -> dict:
    env = user_env(home)
    done = subprocess.run([sys.executable, "-m", "tasks.collect.seed_profiles", "--dsn", dsn, "--limit", "14"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_profile_scorer_smoke(tmp_path, database):
    home = tmp_path / "home"
    seeded = _seed(home, database)
    assert seeded["database_created"] is True and seeded["profiles"] == 14
    assert seeded["scores_in_table"] + len(seeded["label_failures"]) == 14
    again = _seed(home, database)  # idempotent: only the profiles that failed are labelled again
    assert again["attempted"] == len(seeded["label_failures"]) and again["profiles_written"] == 0
    assert again["labelled_now"] + len(again["label_failures"]) == again["attempted"]
    assert again["scores_written"] == again["labelled_now"]

    password, api_key = f"pw-canary-{uuid.uuid4().hex}", f"sk-canary-{uuid.uuid4().hex}"
    dsn = database.replace("postgres@", f"postgres:{password}@", 1)  # trust auth: accepted, never needed
    with OpenAIServer(api_key=api_key) as judge:
        code, summary, stderr = smoke(
            home, "profile-scorer",
            env_extra={"DISTILLERY_POSTGRES_DSN": dsn, "CANARY_TEACHER_KEY": api_key, "PREFECT_LOGGING_LEVEL": "DEBUG"},
            overrides=["validate.judge=true", "teacher.provider=openai", "teacher.model=fake-judge",
                       f"teacher.base_url={judge.base_url}", "teacher.api_key_env=CANARY_TEACHER_KEY"])
        judged = judge.completions
    assert code == 0, f"{summary['stages']}\n{stderr[-3000:]}"
    assert statuses(summary) == {**{s: "completed" for s in STAGES}, "pairs": "skipped"}
    # The labels come from the database: the only teacher calls are the judge's, all with the canary key.
    assert judged >= 1 and summary["teacher_calls"] == judged
    leaks = [str(path) for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()
             and any(canary.encode() in path.read_bytes() for canary in (password, api_key))]
    assert not leaks, f"a canary secret was written to {leaks}"
    assert summary["counts"]["collect"]["0-postgres"]["collected"] == min(12, seeded["scores_in_table"])
    metrics = summary["gate"]["metrics"]
    for name in ("profile_score_avg", "profile_score_min", "profile_label_pearson", "json_valid", "latency_p95_s"):
        assert name in metrics
    assert 0.0 <= metrics["profile_score_min"] <= metrics["profile_score_avg"] <= 1.0
    assert "profile_score_avg" in summary["counts"]["validate"]["base"]
