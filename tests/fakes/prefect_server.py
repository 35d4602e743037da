"""A real Prefect server for tests: ``prefect server start`` as a subprocess on 127.0.0.1 and a free port.

Unlike ``prefect_test_harness`` (an in-process ephemeral server), this is the same server an operator
runs: the CLI, its own process, a database chosen by URL (SQLite in the test's folder by default,
PostgreSQL when ``database_url`` says so), the UI served at the root. Other processes (``prefect
deploy``, a worker, ``python -m flows.full``) reach it through :func:`prefect_env`.

Every process started here runs in its own session and is stopped by killing its process group, so
nothing outlives the ``with`` block, not even the uvicorn child the CLI spawns.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]

# Settings every process of a test shares: no telemetry, no surprise of a user's profile.
_QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLI_COLORS": "false",
    "PREFECT_CLI_WRAP_LINES": "false",
    "PREFECT_PROFILES_PATH": "/dev/null",
}


@dataclass(frozen=True)
class PrefectServer:
    """A running server: ``api_url`` ends in ``/api``; ``ui_url`` is the UI's root."""

    api_url: str
    ui_url: str
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        return prefect_env(self.api_url, self.home / "client", **extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _without_prefect_settings() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}


def prefect_env(api_url: str, prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a client process (CLI, worker, flow) talking to the server at ``api_url``."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    env = _without_prefect_settings()
    env.update(_QUIET, PREFECT_API_URL=api_url, PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def user_env(distillery_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell running distillery with this state folder: this process's
    environment without its ``PREFECT_*`` variables (importing ``flows`` set them for the test session's
    first state folder, and they would win over ``DISTILLERY_HOME`` in the child)."""
    env = _without_prefect_settings()
    env.update(DISTILLERY_HOME=str(distillery_home), **extra)
    return env


def start_process(args: list[str], env: Mapping[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """Start a long-running process in its own session, stdout and stderr to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # the group may outlive its leader (uvicorn under the CLI, a flow under a worker)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextmanager
def prefect_server(folder: Path, database_url: str | None = None, startup_timeout: float = 180.0,
                   **server_env: str) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` with its state in ``folder``; yield it once ``/api/health`` answers.

    Args:
        folder: the server's PREFECT_HOME, its SQLite database (by default) and its log.
        database_url: ``PREFECT_API_DATABASE_CONNECTION_URL``, e.g.
            ``postgresql+asyncpg://postgres@127.0.0.1:5432/db``. Default: SQLite in ``folder``.
        startup_timeout: seconds to wait for the health check (migrations and the UI copy included).
        **server_env: more ``PREFECT_SERVER_*`` settings, e.g. a faster scheduler loop.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(
        api_url, folder / "server-home",
        PREFECT_API_DATABASE_CONNECTION_URL=database_url or f"sqlite+aiosqlite:///{folder / 'prefect.db'}",
        PREFECT_UI_API_URL=api_url,
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        **server_env,
    )
    log = folder / "server.log"
    proc = start_process(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {startup_timeout}s:\n{tail(log)}")
            time.sleep(0.5)
        yield PrefectServer(api_url=api_url, ui_url=f"http://127.0.0.1:{port}", home=folder, log=log)
    finally:
        stop_process(proc)


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 300.0, cwd: Path = REPO,
            ) -> subprocess.CompletedProcess:
    """Run a ``prefect`` CLI command to completion; fail with its output when it fails."""
    proc = subprocess.run(PREFECT + args, cwd=cwd, env=dict(env), capture_output=True, text=True, check=False,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@contextmanager
def process_worker(server: PrefectServer, pool: str, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """The documented worker, ``python -m deployments.worker`` (``prefect worker start --type process``
    with distillery's Prefect settings); flow runs inherit its environment, ``env`` included."""
    args = [sys.executable, "-m", "deployments.worker", "--pool", pool, "--prefetch-seconds", "5"]
    proc = start_process(args, server.env(PREFECT_WORKER_QUERY_SECONDS="2", **env), log)
    try:
        yield proc
    finally:
        stop_process(proc)


def sync_client(server: PrefectServer):
    """A synchronous Prefect client bound to ``server`` (whatever this process's own settings are)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(server.api_url)


PREFECT_YAML = REPO / "deployments" / "prefect.yaml"


def load_prefect_yaml(path: Path = PREFECT_YAML) -> dict:
    """The deployment file with its YAML aliases resolved (``definitions`` inlined)."""
    import yaml

    return yaml.safe_load(path.read_text())


def derived_prefect_yaml(dest: Path, base: str, name: str, **changes: object) -> Path:
    """Write a prefect.yaml holding one deployment: ``base`` from deployments/prefect.yaml, renamed.

    ``changes`` replace fields of the deployment (``entrypoint``, ``parameters``, ``schedules``...), so a
    test deploys through the same file, work pool and pull steps as production, with a cheap flow or
    without the weekly schedule.
    """
    import yaml

    spec = load_prefect_yaml()
    (deployment,) = [d for d in spec["deployments"] if d["name"] == base]
    spec["deployments"] = [{**deployment, "name": name, **changes}]
    spec.pop("definitions", None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


def deploy(server: PrefectServer, prefect_file: Path = PREFECT_YAML) -> subprocess.CompletedProcess:
    """What docs/operations.md tells an operator to run: create the process pools, then
    ``prefect deploy --all`` from the repository root (the pull step records that folder)."""
    env = server.env()
    pools = {d["work_pool"]["name"] for d in load_prefect_yaml(prefect_file)["deployments"]}
    for pool in sorted(pools):
        run_cli(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
    return run_cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], env)
