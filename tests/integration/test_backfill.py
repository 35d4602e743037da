"""Resuming a failed run, end to end on CPU with the real small model, against a real Prefect server.

One real ``python -m flows.full`` run fails late (llama.cpp's converter is missing, so ``package``
fails after collect..train completed and paid the teacher). Then:

- ``python -m flows.backfill <flow-run-id>`` without the fault re-executes only package, validate and
  deploy; every earlier stage is ``cached`` and the teacher is called zero times;
- Prefect's own retry of a deployment's flow run (what the UI's Retry does, run by a process worker)
  behaves the same: the same flow run runs again, earlier stages cached, zero teacher calls.

The worker is ``python -m deployments.worker`` (see docs/operations.md): with a bare ``prefect worker
start`` the flow's Prefect results would not be where CLI runs put them, and nothing would be cached.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.prefect_server import (
    REPO,
    PrefectServer,
    deploy,
    derived_prefect_yaml,
    prefect_server,
    process_worker,
    sync_client,
    tail,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

STAGES = ["collect", "synthesize", "curate", "pairs", "train", "package", "validate", "deploy"]
BEFORE, AFTER = STAGES[:5], STAGES[5:]
TINY = [
    "synthesize.max_items=1", "teacher.max_tokens=96", "synthesize.source_chars=600",
    "collect.sources.1.limit=12", "collect.sources.3.limit=4", "pairs.enabled=true", "train.method=sft+dpo",
    "pairs.max_prompts=2", "pairs.max_tokens=48",
    "train.sft.max_steps=2", "train.sft.max_seq_len=128", "curate.max_tokens=192", "train.dpo.max_steps=1",
    "validate.max_examples=2", "validate.max_tokens=24",
]


@dataclass
class FailedRun:
    server: PrefectServer
    home: Path
    root: Path
    missing_converter: Path
    summary: dict
    flow_run_id: str


def _statuses(summary: dict) -> dict[str, str]:
    return {name: stage["status"] for name, stage in summary["stages"].items()}


def _run(server: PrefectServer, home: Path, args: list[str], log: Path, **env: str) -> tuple[int, dict]:
    """Run ``python <args>`` as a user would, with the server's API; return (exit code, last-line JSON)."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=server.env(DISTILLERY_HOME=str(home), **env),
                          capture_output=True, text=True, timeout=2400, check=False)
    log.write_text(f"$ {' '.join(args)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no summary printed; stderr tail:\n{proc.stderr[-4000:]}"
    return proc.returncode, json.loads(lines[-1])


def _flow_run_id(server: PrefectServer, run_id: str) -> str:
    """The full flow run id behind a summary's run_id (``<recipe>-<stamp>-<first 8 of the id>``)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    prefix = run_id.rsplit("-", 1)[1]
    with sync_client(server) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["distillery"])))
    (match,) = [str(run.id) for run in runs if str(run.id).startswith(prefix)]
    return match


def _summary_of(flow_run, home: Path) -> dict:
    """A worker-run flow's summary: its persisted JSON result under $DISTILLERY_HOME/prefect/results."""
    data = flow_run.state.data
    key = data.storage_key if hasattr(data, "storage_key") else data["storage_key"]
    path = Path(key) if Path(key).is_absolute() else home / "prefect" / "results" / key
    stored = json.loads(path.read_text())
    return stored["result"] if isinstance(stored, dict) and set(stored) == {"metadata", "result"} else stored


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("backfill")
    home = root / "distillery-home"
    missing = root / "no-converter"
    with prefect_server(root / "server") as server:
        args = ["-m", "flows.full"] + [arg for item in TINY for arg in ("--set", item)]
        code, summary = _run(server, home, args, root / "failed-run.log", DISTILLERY_CONVERTER_DIR=str(missing))
        assert code == 1, summary
        flow_run_id = _flow_run_id(server, summary["run_id"])
        yield FailedRun(server, home, root, missing, summary, flow_run_id)


@pytest.mark.timeout(3600)
def test_backfill_reexecutes_only_the_failed_stage_and_after(failed_run):
    failed = failed_run.summary
    assert _statuses(failed) == {**dict.fromkeys(BEFORE, "completed"), "package": "failed",
                                 "validate": "skipped", "deploy": "skipped"}
    assert "convert_hf_to_gguf" in failed["stages"]["package"]["reason"]
    assert failed["teacher_calls"] > 0
    if failed.get("flow_run_id"):
        assert failed["flow_run_id"] == failed_run.flow_run_id

    code, summary = _run(failed_run.server, failed_run.home, ["-m", "flows.backfill", failed_run.flow_run_id],
                         failed_run.root / "backfill.log")
    assert code == 0, summary
    assert summary["backfill_of"] == failed_run.flow_run_id
    assert _statuses(summary) == {**dict.fromkeys(BEFORE, "cached"), **dict.fromkeys(AFTER, "completed")}
    assert summary["teacher_calls"] == 0
    assert summary["gate"]["passed"] is True
    assert Path(summary["artifacts"]["gguf_q8_0"].removeprefix("file://")).stat().st_size > 0

    with sync_client(failed_run.server) as client:
        original = client.read_flow_run(failed_run.flow_run_id)
        (rerun,) = [run for run in client.read_flow_runs() if run.name == f"backfill-of-{original.name}"]
    assert original.state.is_failed(), original.state
    assert rerun.parameters == original.parameters
    assert rerun.state.is_completed()


def test_backfill_finds_a_run_by_its_run_id(failed_run):
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.backfill import _failed_run

    with temporary_settings({PREFECT_API_URL: failed_run.server.api_url}):
        found, _, parameters = asyncio.run(_failed_run(failed_run.summary["run_id"]))
    assert str(found) == failed_run.flow_run_id
    assert parameters["overrides"] == TINY


@pytest.mark.timeout(3600)
def test_prefect_retry_of_a_deployment_run_reuses_completed_stages(failed_run):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.states import AwaitingRetry

    server, home, root = failed_run.server, failed_run.home, failed_run.root
    # A field only package reads: this run's package stage is new (and fails), the rest is cached.
    parameters = {"recipe": "stats-qa", "overrides": TINY + ["package.temperature=0.3"]}
    prefect_file = derived_prefect_yaml(root / "prefect.yaml", base="stats-qa-weekly", name="retry-e2e",
                                        parameters=parameters, schedules=[])
    deploy(server, prefect_file)
    with sync_client(server) as client:
        deployment = client.read_deployment_by_name("distillery/retry-e2e")
        flow_run = client.create_flow_run_from_deployment(deployment.id)

    def wait_terminal(log: Path, runs: int):
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            with sync_client(server) as client:
                run = client.read_flow_run(flow_run.id)
            if run.run_count >= runs and run.state.is_final():
                return run
            time.sleep(3)
        raise AssertionError(f"flow run {flow_run.id} not finished; worker log:\n{tail(log)}")

    # package.temperature changes the Modelfile, not the GGUF. When an earlier test of this module has
    # already validated and deployed that same GGUF, validate's inputs are unchanged (production is the
    # candidate itself, so there is nothing to compare against): it is served from the cache.
    validated_before = (home / "store" / "latest" / "stats-qa.json").exists()
    pool = deployment.work_pool_name
    with process_worker(server, pool, root / "worker-faulty.log", DISTILLERY_HOME=str(home),
                        DISTILLERY_CONVERTER_DIR=str(failed_run.missing_converter)):
        first = wait_terminal(root / "worker-faulty.log", runs=1)
    assert first.state.is_failed(), first.state  # a failed stage fails the flow run, visibly in the UI
    assert "package" in first.state.message
    first_summary = _summary_of(first, home)
    assert _statuses(first_summary) == {**dict.fromkeys(BEFORE, "cached"), "package": "failed",
                                        "validate": "skipped", "deploy": "skipped"}
    assert first_summary["teacher_calls"] == 0

    # What the UI's Retry sends (Prefect 3.8 V2 UI: set_state AwaitingRetry, force=True); the worker
    # now runs without the fault.
    with sync_client(server) as client:
        result = client.set_flow_run_state(flow_run.id, AwaitingRetry(message="Retry from the UI"), force=True)
    assert result.status.value == "ACCEPT", result
    with process_worker(server, pool, root / "worker.log", DISTILLERY_HOME=str(home)):
        again = wait_terminal(root / "worker.log", runs=2)
    assert again.state.is_completed(), tail(root / "worker.log")
    summary = _summary_of(again, home)
    assert _statuses(summary) == {**dict.fromkeys(BEFORE, "cached"), "package": "completed",
                                  "validate": "cached" if validated_before else "completed", "deploy": "completed"}
    assert summary["teacher_calls"] == 0
    assert summary["gate"]["passed"] is True
    with sync_client(server) as client:  # a retry, not a new run
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    assert [str(run.id) for run in runs] == [str(flow_run.id)]
