"""profile-scorer end to end on CPU with the real small model and the real PostgreSQL: seed a fresh
database with `python -m tasks.collect.seed_profiles` (Stack Exchange users from the sample, scored by
the teacher), then `python -m flows.full --recipe profile-scorer --profile smoke` against it.

The same run is the canary drill of the whole DAG: the database password and the teacher's API key
are unique canaries (the judge of the validate stage calls the FAKE OpenAI-compatible server of
tests/fakes with that key, which the server checks), Prefect logs at DEBUG, and afterwards neither
canary may appear in any byte the run left: stdout, stderr, Prefect's database and logs, the teacher
cache, every artifact in the store (datasets, reports, the GGUF and its metadata)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fakes.openai_server import OpenAIServer
from tests.fakes.prefect_server import user_env

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
STAGES = ["collect", "synthesize", "curate", "pairs", "train", "package", "validate", "deploy"]


def run_recipe(home: Path, recipe: str, env_extra: dict | None = None,
               overrides: list[str] = ()) -> tuple[int, dict, str]:
    env = user_env(home, **(env_extra or {}))
    env.pop("DISTILLERY_OLLAMA_HOST", None)
    env.pop("DISTILLERY_STORE_URI", None)
    args = [sys.executable, "-m", "flows.full", "--recipe", recipe, "--profile", "smoke"]
    for item in overrides:
        args += ["--set", item]
    out, err = home.parent / "stdout.txt", home.parent / "stderr.txt"
    # Files, not pipes, and a session of its own: a Prefect server left behind by a crashed run can
    # neither hold the test's pipes open nor outlive the test.
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=850)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in out.read_text().strip().splitlines() if line.strip()]
    assert lines, f"no output (exit {code}); stderr tail:\n{err.read_text()[-4000:]}"
    return code, json.loads(lines[-1]), err.read_text()


def statuses(summary: dict) -> dict[str, str]:
    return {name: stage["status"] for name, stage in summary["stages"].items()}


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
        code, summary, stderr = run_recipe(
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
