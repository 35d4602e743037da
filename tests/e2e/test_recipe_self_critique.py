"""self-critique end to end on CPU with the real small model: `python -m flows.full --recipe
self-critique --profile smoke` (real seed instructions -> teacher responses -> respond/critique/improve
pairs -> DPO only -> GGUF -> win rate over the base judged by the teacher, each answer graded alone).

The student is the real SmolLM2-135M through llama.cpp; the teacher is the FAKE OpenAI-compatible
server of tests/fakes (the full profile's teacher is an OpenAI model behind that protocol). With the
135M model as its own critic, whether any pair survives depends on its grades, and so on the CPU's
floating-point path (llama.cpp is built for the machine): a DPO-only recipe with no pairs has nothing
to train. The fake answers every structured request with schema-valid JSON, so the pairs, DPO and the
judge run on every machine; it gives no log-probabilities a judge could read as yes or no, so the
judge's JSON verdicts are used. (The quick profile's local judge is tested in
tests/integration/test_judge_local.py.)

The same run is the two-machines drill: the artifact store is S3 (moto's S3 server), where Prefect's
task results live too, so a run from a second, empty state folder (another machine: its own Prefect
server, its own caches) finds every stage cached and pays the teacher nothing (the fake's request
counter says what each machine paid)."""

from __future__ import annotations

import pytest

from tasks.core.recipe import load_recipe
from tests.e2e.runner import STAGES, smoke, statuses
from tests.fakes.openai_server import OpenAIServer
from tests.fakes.s3 import moto_s3_endpoint, new_bucket, s3_client

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.mark.timeout(3000)
def test_self_critique_smoke_and_a_second_machine_sharing_the_bucket(tmp_path):
    with moto_s3_endpoint() as endpoint, OpenAIServer(api_key="sk-teacher-test") as teacher:
        bucket = new_bucket(endpoint, "distillery-shared")
        env = {"DISTILLERY_STORE_URI": f"s3://{bucket}/team", "DISTILLERY_S3_ENDPOINT_URL": endpoint,
               "FAKE_TEACHER_KEY": "sk-teacher-test"}
        overrides = ["teacher.provider=openai", "teacher.model=fake-teacher", f"teacher.base_url={teacher.base_url}",
                     "teacher.api_key_env=FAKE_TEACHER_KEY"]
        code, summary, stderr = smoke(tmp_path / "machine-a", "self-critique", overrides, env)
        assert code == 0, f"{summary['stages']}\n{stderr[-3000:]}"
        answered, paid = teacher.completions, teacher.requests
        keys = [obj["Key"] for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="team/prefect-results/") for obj in page.get("Contents", [])]

        code, second, stderr = smoke(tmp_path / "machine-b", "self-critique", overrides, env)
        assert code == 0, stderr[-3000:]
        assert teacher.requests == paid, "the second machine called the teacher"

    # Machine A: the recipe itself.
    assert answered >= 1 and summary["teacher_calls"] == answered
    assert statuses(summary) == {s: "completed" for s in STAGES}
    pairs = summary["counts"]["pairs"]["pairs"]
    assert 1 <= pairs["prompts"] <= 4 and pairs["pairs"] >= 1
    assert 0 <= pairs["improved_graded_lower"] <= pairs["prompts"]  # how the teacher graded the loop
    assert 0.0 <= pairs["grade_original_mean"] <= 1.0 and 0.0 <= pairs["grade_improved_mean"] <= 1.0
    train = summary["counts"]["train"]
    assert "sft" not in train and "dpo" in train  # DPO only
    metrics = summary["gate"]["metrics"]
    assert 0.0 <= metrics["win_rate"] <= 1.0 and metrics["judge_pairs"] >= 1
    assert metrics["pair_yield"] == pairs["pair_yield"]
    judge = summary["counts"]["validate"]["judge"]
    assert judge["judge_wins"] + judge["judge_losses"] + judge["judge_ties"] == judge["judge_pairs"]
    assert 0.0 <= judge["judge_preference"] <= 1.0
    served = f"gguf_{load_recipe('self-critique', profile='smoke').package.serve}"
    assert summary["artifacts"][served].startswith(f"s3://{bucket}/team/")
    assert keys, "no Prefect results in the bucket"

    # Machine B: everything from the bucket.
    assert set(statuses(second).values()) == {"cached"}
    assert second["teacher_calls"] == 0
    assert second["artifacts"][served] == summary["artifacts"][served]
