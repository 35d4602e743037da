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
from pathlib import Path

import pytest

from tests.fakes.openai_server import Fault, OpenAIServer
from tests.fakes.prefect_server import user_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

GENERATE = """
import json, sys
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
    env = user_env(home, FAKE_TEACHER_KEY="sk-test-key")
    return subprocess.Popen([sys.executable, "-c", GENERATE, json.dumps(_overrides(base_url))], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(1800)
def test_killed_generation_resumes_with_exactly_the_missing_requests(tmp_path):
    with OpenAIServer() as server:
        reference = _finish(_start(tmp_path / "uninterrupted", server.base_url))
        total = server.requests
    assert total >= 4 and reference["rows"] >= 4

    k = total // 2
    with OpenAIServer() as server:
        server.script(*[Fault("ok")] * k, Fault.hang())  # request k+1 is held: the kill lands mid-flight
        first = _start(tmp_path / "killed", server.base_url)
        try:
            assert server.wait_for_requests(k + 1, timeout=600), "the generation never reached the teacher"
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the flow and the Prefect server it started
            first.wait(timeout=60)
        assert server.completions == k
        server.clear()  # releases the held request; nothing is scripted any more
        before = server.requests
        resumed = _finish(_start(tmp_path / "killed", server.base_url))
        assert server.requests - before == total - k  # exactly the requests the killed run did not finish
    assert resumed["sha256"] == reference["sha256"]  # the same dataset, byte for byte
    assert resumed["rows"] == reference["rows"]
