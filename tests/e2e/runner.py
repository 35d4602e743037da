"""``python -m flows.full`` run as a user runs it, for the end-to-end tests: a subprocess with the
user's environment and its own state folder, the last line of stdout parsed as the run's summary."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.fakes.prefect_server import user_env

REPO = Path(__file__).resolve().parents[2]
STAGES = ["collect", "synthesize", "curate", "pairs", "train", "package", "validate", "deploy"]


def run_distill(home: Path, *args: str, overrides: list[str] | tuple[str, ...] = (),
                env_extra: dict | None = None, timeout: float = 1500) -> tuple[int, dict, str]:
    """Run ``python -m flows.full ARGS --set OVERRIDE...`` with ``home`` as the state folder.

    Returns the exit code, the summary (the last stdout line) and stderr. Output goes to files beside
    ``home`` (``<home>.out``, ``<home>.err``), not pipes, and the run gets a session of its own: a Prefect
    server left behind by a crashed run can neither hold the test's pipes open nor outlive the test.
    """
    env = user_env(home, **(env_extra or {}))
    command = [sys.executable, "-m", "flows.full", *args]
    for item in overrides:
        command += ["--set", item]
    home.parent.mkdir(parents=True, exist_ok=True)
    out, err = home.parent / f"{home.name}.out", home.parent / f"{home.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert lines, f"no summary (exit {code}); stderr tail:\n{err.read_text()[-4000:]}"
    return code, json.loads(lines[-1]), err.read_text()


def smoke(home: Path, recipe: str, overrides: list[str] | tuple[str, ...] = (),
          env_extra: dict | None = None) -> tuple[int, dict, str]:
    """A recipe's smoke profile: ``python -m flows.full --recipe RECIPE --profile smoke``."""
    return run_distill(home, "--recipe", recipe, "--profile", "smoke", overrides=overrides, env_extra=env_extra,
                       timeout=850)


def statuses(summary: dict) -> dict[str, str]:
    return {name: stage["status"] for name, stage in summary["stages"].items()}
