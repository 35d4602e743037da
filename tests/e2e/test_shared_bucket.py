"""Two machines, one bucket: with the artifact store on S3 (moto's S3 server), Prefect's task results
live in the same bucket, so a run from a second, empty state folder (another machine: its own
Prefect server, its own caches) finds every stage cached and pays the teacher nothing."""

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
from tests.fakes.s3 import moto_s3_endpoint, new_bucket, s3_client

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


def _run(home: Path, env_extra: dict) -> tuple[int, dict, str]:
    env = user_env(home, **env_extra)
    env.pop("DISTILLERY_OLLAMA_HOST", None)
    out, err = home.parent / f"{home.name}.out", home.parent / f"{home.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "flows.full", "--profile", "smoke"], cwd=REPO, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=1500)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert lines, f"no summary (exit {code}):\n{err.read_text()[-4000:]}"
    return code, json.loads(lines[-1]), err.read_text()


@pytest.mark.timeout(3000)
def test_a_second_machine_sharing_the_bucket_reuses_every_stage(tmp_path):
    with moto_s3_endpoint() as endpoint:
        bucket = new_bucket(endpoint, "distillery-shared")
        env = {"DISTILLERY_STORE_URI": f"s3://{bucket}/team", "DISTILLERY_S3_ENDPOINT_URL": endpoint}
        code, first, stderr = _run(tmp_path / "machine-a", env)
        assert code == 0, stderr[-3000:]
        assert {s["status"] for s in first["stages"].values()} == {"completed"}
        assert first["artifacts"]["gguf_q8_0"].startswith(f"s3://{bucket}/team/")
        keys = [obj["Key"] for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="team/prefect-results/") for obj in page.get("Contents", [])]
        assert keys, "no Prefect results in the bucket"

        code, second, stderr = _run(tmp_path / "machine-b", env)
        assert code == 0, stderr[-3000:]
    assert {s["status"] for s in second["stages"].values()} == {"cached"}
    assert second["teacher_calls"] == 0
    assert second["artifacts"]["gguf_q8_0"] == first["artifacts"]["gguf_q8_0"]
