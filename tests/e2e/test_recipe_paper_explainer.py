"""paper-explainer end to end on CPU with the real small model: `python -m flows.full --recipe
paper-explainer --profile smoke` (arXiv PDFs -> passages -> persona explanations -> one adapter, GGUF,
validation and deployment per persona). The smoke profile builds two of the three personas."""

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


def run_recipe(home: Path, recipe: str, env_extra: dict | None = None) -> tuple[int, dict, str]:
    env = user_env(home, **(env_extra or {}))
    env.pop("DISTILLERY_OLLAMA_HOST", None)
    env.pop("DISTILLERY_STORE_URI", None)
    args = [sys.executable, "-m", "flows.full", "--recipe", recipe, "--profile", "smoke"]
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


def test_paper_explainer_smoke_builds_one_model_per_persona(tmp_path):
    home = tmp_path / "home"
    code, summary, stderr = run_recipe(home, "paper-explainer")
    assert code == 0, f"{summary['stages']}\n{stderr[-3000:]}"
    assert statuses(summary) == {**{s: "completed" for s in STAGES}, "pairs": "skipped"}
    assert set(summary["variants"]) == {"eli5", "executive"}
    ggufs = set()
    for persona, variant in summary["variants"].items():
        assert variant["recipe"] == f"paper-explainer-{persona}"
        assert variant["run_id"] == f"{summary['run_id']}-{persona}"
        assert variant["status"] == "completed" and variant["gate"]["passed"] is True
        assert {"rouge_l", "format_followed"} <= set(variant["gate"]["metrics"])
        ggufs.add(variant["artifacts"]["gguf_q4_k_m"])
        heldout = Path(variant["artifacts"]["heldout"][len("file://"):])
        rows = [json.loads(line) for line in heldout.read_text().splitlines()]
        assert rows and all(r["metadata"]["variant"] == persona for r in rows)
        latest = json.loads((home / "store" / "latest" / f"paper-explainer-{persona}.json").read_text())
        assert latest["run_id"] == variant["run_id"]
        assert f"{persona}.rouge_l" in summary["gate"]["metrics"]
    assert len(ggufs) == 2  # two different models
    assert summary["gate"]["passed"] is True
