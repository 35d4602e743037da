"""SIGTERM to ``python -m flows.full`` (``kill``, a container stop) while a teacher request is in flight:
the process exits promptly with 143, takes the temporary Prefect server it started with it, and the
flow run is recorded as Crashed, not left Running.

The teacher is the FAKE OpenAI-compatible server of tests/fakes (a commercial API cannot run here),
holding a request so the signal lands mid-stage.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import psutil
import pytest

from tests.fakes.openai_server import Fault, OpenAIServer
from tests.fakes.prefect_server import start_process, tail, user_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_sigterm_mid_stage_exits_cleanly_and_marks_the_run_crashed(tmp_path):
    home = tmp_path / "state"
    with OpenAIServer() as server:
        server.script(Fault("ok"), Fault.hang())  # the second request is held until the server stops
        overrides = ["teacher.provider=openai", "teacher.model=fake-teacher", f"teacher.base_url={server.base_url}",
                     "teacher.api_key_env=FAKE_TEACHER_KEY", "teacher.concurrency=1"]
        args = [sys.executable, "-m", "flows.full", "--recipe", "self-critique", "--profile", "smoke"]
        for override in overrides:
            args += ["--set", override]
        log = tmp_path / "run.log"  # a file, not a pipe: nothing reads a pipe while the test waits
        proc = start_process(args, user_env(home, FAKE_TEACHER_KEY="sk-test-key"), log)
        try:
            assert server.wait_for_requests(2, timeout=400), f"the run never reached the teacher:\n{tail(log)}"
            children = psutil.Process(proc.pid).children(recursive=True)
            assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "no temporary Prefect server seen"
            proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` does
            proc.wait(timeout=120)  # the held request never ends: waiting for it times out
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the flow and whatever it started
                proc.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:  # what an unhandled SIGTERM leaves behind, not to outlive the test
        child.kill()
    assert proc.returncode == 128 + signal.SIGTERM, tail(log)
    assert not alive, f"left running after SIGTERM: {[' '.join(c.cmdline()) for c in alive]}"
    database = next(home.rglob("prefect.db"))
    with sqlite3.connect(database) as db:
        states = dict(db.execute("SELECT name, state_type FROM flow_run WHERE parent_task_run_id IS NULL"))
    assert "RUNNING" not in states.values() and "CRASHED" in states.values(), states
