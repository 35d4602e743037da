"""``prefect server start`` on PostgreSQL (the production database): migrations run on a fresh database,
the API is healthy, and a flow run from another process is recorded in PostgreSQL's tables."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.fakes.prefect_server import REPO, prefect_server, sync_client

pytestmark = pytest.mark.integration

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin():
    import psycopg

    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")


@pytest.fixture()
def fresh_database():
    """A new empty database, dropped (connections closed first) after the test."""
    from psycopg import sql

    name = f"prefect_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_prefect_server_runs_on_postgresql(tmp_path, fresh_database):
    import httpx
    import psycopg

    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{fresh_database}"
    with prefect_server(tmp_path / "server", database_url=url) as server:
        assert httpx.get(f"{server.api_url}/health", timeout=10).json() is True
        # The server migrated the empty database it was given.
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{fresh_database}", connect_timeout=5) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"flow", "flow_run", "deployment", "work_pool", "alembic_version"} <= tables

        proc = subprocess.run(
            [sys.executable, "-c", "from tests.fakes.prefect_flows import ping; print(ping(41))"],
            cwd=REPO, env=server.env(), capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == "42"

        with sync_client(server) as client:
            (run,) = client.read_flow_runs()
            assert client.read_flow(run.flow_id).name == "distillery-ping"
            assert run.state.is_completed()
            assert run.parameters == {"value": 41}

    # The same run, read straight from the database the server was given.
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{fresh_database}", connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id").fetchall()
        assert rows == [("distillery-ping", "COMPLETED")]
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
