"""The teacher inside Prefect: progress artifacts, keys from Secret blocks, fan-out onto Dask workers.

They run under the session's ``prefect_harness`` (tests/conftest.py): one temporary server for all flow tests.
"""

from __future__ import annotations

import logging
import os

import pytest
from pydantic import BaseModel

from tasks.core.recipe import TeacherConfig
from tasks.core.settings import get_settings
from tasks.teacher import teacher as teacher_module
from tasks.teacher.base import messages
from tests.fakes.openai_server import Fault, OpenAIServer

pytestmark = pytest.mark.integration

CANARY = "sk-CANARY-block-5e1d2c3b4a"


class Note(BaseModel):
    title: str
    rating: int


def make_note(teacher, item: int) -> dict:
    """What each shard does to an item (module level: it travels to Dask workers by name)."""
    value, reason = teacher.structured(messages(("user", f"topic {item}")), Note, max_tokens=32)
    assert reason is None
    return {"item": item, "title": value.title, "pid": os.getpid()}


@pytest.fixture
def server():
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "state"))
    get_settings.cache_clear()
    teacher_module.clear_teachers()
    yield tmp_path / "state"
    teacher_module.clear_teachers()
    get_settings.cache_clear()


def _config(server: OpenAIServer, key_env: str, **kwargs: object) -> TeacherConfig:
    return TeacherConfig(provider="openai", model="fake-teacher", base_url=server.base_url, api_key_env=key_env,
                         **kwargs)


def test_generation_inside_a_flow_publishes_a_progress_artifact(prefect_harness, server, home, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    monkeypatch.setenv("FAKE_TEACHER_KEY", "sk-test")
    config = _config(server, "FAKE_TEACHER_KEY")

    @flow
    def generate(n: int) -> str:
        from prefect.runtime import flow_run

        teacher = teacher_module.get_teacher(config)
        out = teacher.map(lambda i: teacher.structured(messages(("user", f"q{i}")), Note)[0], list(range(n)),
                          desc="notes")
        assert len(out) == n
        return flow_run.id

    run_id = generate(6)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == 1
    assert float(progress[0].data) == 100.0
    assert "notes: 6/6" in progress[0].description and "6 paid" in progress[0].description


def test_the_key_comes_from_a_secret_block_and_never_shows(prefect_harness, server, home, monkeypatch, caplog):
    from prefect.blocks.system import Secret

    caplog.set_level(logging.DEBUG)
    Secret(value=CANARY).save("distillery-teacher-key", overwrite=True)
    monkeypatch.delenv("DISTILLERY_TEACHER_KEY", raising=False)
    server.api_key = CANARY
    teacher = teacher_module.get_teacher(_config(server, "DISTILLERY_TEACHER_KEY"))
    value, _ = teacher.structured(messages(("user", "q")), Note)
    assert value is not None and server.log[-1].authorized  # the block's key reached the server
    assert CANARY not in caplog.text and "CANARY" not in repr(teacher) + str(teacher.provider)


def test_a_sharded_teacher_runs_a_generators_closure_on_dask_workers(prefect_harness, server, home, monkeypatch):
    from distributed import LocalCluster

    from tasks.teacher.scale import ShardedTeacher

    monkeypatch.setenv("FAKE_TEACHER_KEY", "sk-test")  # before the workers start: they inherit it
    items = list(range(12))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = _config(server, "FAKE_TEACHER_KEY", concurrency=2, requests_per_minute=6000, shards=2,
                         dask_address=cluster.scheduler_address)
        stage_teacher = teacher_module.get_teacher(config)
        stats = teacher_module.fresh_stats(stage_teacher)
        teacher = ShardedTeacher(stage_teacher, config)
        topic = "topic"

        def one(item: int) -> dict:  # a closure over the teacher, as the generators write them
            value, reason = teacher.structured(messages(("user", f"{topic} {item}")), Note, max_tokens=32)
            assert reason is None
            return {"item": item, "title": value.title, "pid": os.getpid(), "teacher": teacher.name}

        seen: list[tuple[int, int]] = []
        results = teacher.map(one, items, progress=lambda done, total: seen.append((done, total)))
        assert [r["item"] for r in results] == items
        pids = {r["pid"] for r in results}
        assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work
        assert {r["teacher"] for r in results} == {stage_teacher.name}
        assert sorted(seen) == [(6, 12), (12, 12)]  # progress as each shard finishes
        # The workers' requests are booked on the stage's teacher.
        assert server.requests == 12 and stats.completions == 12 and stats.requests == 12 and stats.cache_hits == 0
        # The workers share the durable cache: a second fan-out pays for nothing.
        server.clear()
        again = teacher.map(one, items)
    assert [r["title"] for r in again] == [r["title"] for r in results]
    assert server.requests == 0 and stats.cache_hits == 12 and stats.completions == 12


def test_a_shard_failure_reaches_the_stage_with_its_type(prefect_harness, server, home, monkeypatch):
    from tasks.teacher.base import QuotaExhausted
    from tasks.teacher.scale import ShardedTeacher

    monkeypatch.setenv("FAKE_TEACHER_KEY", "sk-test")
    server.script(*[Fault.quota()] * 3)
    config = _config(server, "FAKE_TEACHER_KEY", shards=2)  # no address: a local cluster for the call
    teacher = ShardedTeacher(teacher_module.get_teacher(config), config)
    with pytest.raises(QuotaExhausted, match="quota"):
        teacher.map(lambda item: teacher.structured(messages(("user", f"q {item}")), Note), [1, 2, 3])


def test_dask_task_runner_builds_a_local_cluster_by_default():
    from prefect_dask import DaskTaskRunner

    from tasks.teacher.scale import dask_task_runner

    runner = dask_task_runner(n_workers=3)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["processes"] is True
    assert dask_task_runner(address="tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
