"""SIGKILL the pipeline mid-generation, run it again: exactly the missing teacher requests are made and
the synthesized dataset is byte for byte the one an uninterrupted run produces.

The stages are the real collect and synthesize flows of the default recipe (real sample data, real
PDF parsing), run by a subprocess as ``python -m flows.full`` would run them; the teacher is the FAKE
OpenAI-compatible server of tests/fakes (a commercial API cannot run here), which answers
deterministically from the prompt and can hold a request so the kill lands while it is in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.openai_server import Fault, OpenAIServer
from tests.fakes.prefect_server import tail, user_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

# ``flows`` first, as ``python -m flows.full`` does: importing it points Prefect at the state folder (its
# home, results and the ephemeral server's 90 s start-up timeout) before Prefect reads its settings.
GENERATE = """
import json, sys
import flows
from prefect import flow
from flows.collect import collect_flow
from flows.synthesize import synthesize_flow
from tasks.core.recipe import load_recipe

@flow(name="generate")
def generate(overrides):
    recipe = load_recipe("stats-qa", overrides, "smoke")
    collected = collect_flow(recipe)
    synthesized = synthesize_flow(recipe, collected.outputs)
    examples = synthesized.output("examples")["examples"]
    return {"sha256": examples.sha256, "rows": examples.rows, "teacher_calls": synthesized.teacher_calls}

print(json.dumps(generate(json.loads(sys.argv[1]))))
"""


def _overrides(base_url: str) -> list[str]:
    return ["teacher.provider=openai", "teacher.model=fake-teacher", f"teacher.base_url={base_url}",
            "teacher.api_key_env=FAKE_TEACHER_KEY", "teacher.concurrency=1", "synthesize.max_items=6"]


def _start(home: Path, base_url: str) -> subprocess.Popen[str]:
    # Output to a file, not a pipe: nothing reads a pipe while the test waits for the teacher, and a
    # child that fills one (64 KiB of logs) blocks on its next write before it ever gets there.
    home.mkdir(parents=True, exist_ok=True)
    env = user_env(home, FAKE_TEACHER_KEY="sk-test-key")
    with (home / "generate.log").open("a") as log:
        return subprocess.Popen([sys.executable, "-c", GENERATE, json.dumps(_overrides(base_url))], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)


def _log(home: Path) -> str:
    return tail(home / "generate.log")


def _finish(proc: subprocess.Popen[str], home: Path) -> dict:
    proc.wait(timeout=900)
    assert proc.returncode == 0, _log(home)
    return json.loads(next(line for line in reversed(_log(home).splitlines()) if line.startswith("{")))


def _wait_for_requests(server: OpenAIServer, count: int, proc: subprocess.Popen[str], home: Path) -> None:
    deadline = time.monotonic() + 600
    while not server.wait_for_requests(count, timeout=2):
        assert proc.poll() is None, f"the generation exited before its request {count}:\n{_log(home)}"
        assert time.monotonic() < deadline, f"the generation never reached the teacher:\n{_log(home)}"


@pytest.mark.timeout(1800)
def test_killed_generation_resumes_with_exactly_the_missing_requests(tmp_path):
    with OpenAIServer() as server:
        reference = _finish(_start(tmp_path / "uninterrupted", server.base_url), tmp_path / "uninterrupted")
        total = server.requests
    assert total >= 4 and reference["rows"] >= 4

    k = total // 2
    with OpenAIServer() as server:
        server.script(*[Fault("ok")] * k, Fault.hang())  # request k+1 is held: the kill lands mid-flight
        killed = tmp_path / "killed"
        first = _start(killed, server.base_url)
        try:
            _wait_for_requests(server, k + 1, first, killed)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the flow and the Prefect server it started
            first.wait(timeout=60)
        assert server.completions == k
        server.clear()  # releases the held request; nothing is scripted any more
        before = server.requests
        resumed = _finish(_start(killed, server.base_url), killed)
        assert server.requests - before == total - k  # exactly the requests the killed run did not finish
    assert resumed["sha256"] == reference["sha256"]  # the same dataset, byte for byte
    assert resumed["rows"] == reference["rows"]
