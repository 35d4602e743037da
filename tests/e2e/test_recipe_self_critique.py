"""self-critique end to end on CPU with the real small model: `python -m flows.full --recipe
self-critique --profile smoke` (real seed instructions -> teacher responses -> respond/critique/improve
pairs -> DPO only -> GGUF -> win rate over the base judged by the teacher, both orders).

The student is the real SmolLM2-135M through llama.cpp; the teacher is the FAKE OpenAI-compatible
server of tests/fakes (the full profile's teacher is an OpenAI model behind that protocol). With the
135M model as its own critic, whether any pair survives depends on its grades, and so on the CPU's
floating-point path (llama.cpp is built for the machine): a DPO-only recipe with no pairs has nothing
to train. The fake answers every structured request with schema-valid JSON, so the pairs, DPO and the
judge run on every machine; it gives no log-probabilities a judge could read as a letter, so the
judge's JSON verdicts are used."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.prefect_server import user_env

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
STAGES = ["collect", "synthesize", "curate", "pairs", "train", "package", "validate", "deploy"]


def run_recipe(home: Path, recipe: str, env_extra: dict | None = None,
               overrides: list[str] | None = None) -> tuple[int, dict, str]:
    env = user_env(home, **(env_extra or {}))
    env.pop("DISTILLERY_OLLAMA_HOST", None)
    env.pop("DISTILLERY_STORE_URI", None)
    args = [sys.executable, "-m", "flows.full", "--recipe", recipe, "--profile", "smoke"]
    for item in overrides or []:
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


def test_self_critique_smoke(tmp_path):
    from tests.fakes.openai_server import OpenAIServer

    home = tmp_path / "home"
    with OpenAIServer(api_key="sk-teacher-test") as teacher:
        code, summary, stderr = run_recipe(
            home, "self-critique", env_extra={"FAKE_TEACHER_KEY": "sk-teacher-test"},
            overrides=["teacher.provider=openai", "teacher.model=fake-teacher",
                       f"teacher.base_url={teacher.base_url}", "teacher.api_key_env=FAKE_TEACHER_KEY"])
        answered = teacher.completions
    assert code == 0, f"{summary['stages']}\n{stderr[-3000:]}"
    assert answered >= 1 and summary["teacher_calls"] == answered
    assert statuses(summary) == {s: "completed" for s in STAGES}
    pairs = summary["counts"]["pairs"]["pairs"]
    assert 1 <= pairs["prompts"] <= 4 and pairs["pairs"] >= 1
    train = summary["counts"]["train"]
    assert "sft" not in train and "dpo" in train  # DPO only
    metrics = summary["gate"]["metrics"]
    assert 0.0 <= metrics["win_rate"] <= 1.0 and metrics["judge_pairs"] >= 1
    assert metrics["pair_yield"] == pairs["pair_yield"]
    judge = summary["counts"]["validate"]["judge"]
    assert judge["judge_wins"] + judge["judge_losses"] + judge["judge_ties"] == judge["judge_pairs"]
    assert 0.0 <= judge["judge_preference"] <= 1.0
