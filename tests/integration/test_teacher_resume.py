"""The durable cache pays each request once: after a SIGKILL, and in next week's incremental run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from tasks.core.recipe import TeacherConfig
from tasks.core.settings import get_settings
from tasks.teacher import teacher as teacher_module
from tasks.teacher.base import messages
from tests.fakes.openai_server import Fault, OpenAIServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "FAKE_TEACHER_KEY"

# A generation run as a stage would do it: n items, each a structured request, through get_teacher.
GENERATE = """
import json, sys
from pydantic import BaseModel
from tasks.core.recipe import TeacherConfig
from tasks.teacher.base import messages
from tasks.teacher.teacher import get_teacher

class Item(BaseModel):
    title: str
    score: int

base_url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = TeacherConfig(provider="openai", model="fake-teacher", base_url=base_url, api_key_env="FAKE_TEACHER_KEY",
                       concurrency=concurrency)
teacher = get_teacher(config)
out = teacher.map(lambda i: teacher.structured(messages(("user", f"item {i}")), Item, max_tokens=32)[0],
                  list(range(n)), progress=lambda d, t: None)
assert all(v is not None for v in out)
print(json.dumps(teacher.stats.model_dump()))
"""


class Item(BaseModel):
    title: str
    score: int


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "state"))
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    get_settings.cache_clear()
    teacher_module.clear_teachers()
    yield tmp_path / "state"
    teacher_module.clear_teachers()
    get_settings.cache_clear()


def _start(base_url: str, n: int, concurrency: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", GENERATE, base_url, str(n), str(concurrency)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cached_rows(home: Path) -> int:
    with sqlite3.connect(home / "cache" / "teacher.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def _kill_after(server: OpenAIServer, proc: subprocess.Popen[str], arrivals: int) -> None:
    """SIGKILL the generator once ``arrivals`` requests reached the server (the last one hangs)."""
    try:
        assert server.wait_for_requests(arrivals, timeout=60), proc.stderr.read() if proc.poll() is not None else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_pays_exactly_for_the_rest(home):
    n, k = 12, 5
    with OpenAIServer() as server:
        server.script(*[Fault("ok")] * k, Fault.hang())  # request k+1 hangs: the run is mid-flight
        first = _start(server.base_url, n, concurrency=1)
        _kill_after(server, first, k + 1)
        assert server.completions == k and _cached_rows(home) == k
        server.clear()  # releases the hung request; nothing scripted any more
        second = _start(server.base_url, n, concurrency=1)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert server.requests == n - k  # exactly the n-k requests the first run did not finish
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["completions"] == n - k and stats["cache_hits"] == k


def test_a_killed_concurrent_run_pays_once_for_every_request(home):
    n, k = 16, 6
    with OpenAIServer(latency_s=0.05) as server:
        server.script(*[Fault("ok")] * k, *[Fault.hang()] * n)
        first = _start(server.base_url, n, concurrency=4)
        _kill_after(server, first, k + 4)  # k answered, 4 hanging in flight
        cached = _cached_rows(home)
        assert 0 < cached <= k
        server.clear()
        second = _start(server.base_url, n, concurrency=4)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert server.requests == n - cached  # what was cached is never asked again; the rest once


def test_next_weeks_run_pays_only_for_new_inputs(home):
    config = TeacherConfig(provider="openai", model="fake-teacher", base_url=None, api_key_env=KEY_ENV)
    with OpenAIServer() as server:
        config = config.model_copy(update={"base_url": server.base_url})
        teacher = teacher_module.get_teacher(config)

        def run(items: list[str]) -> list[Item | None]:
            teacher_module.fresh_stats(teacher)
            return teacher.map(lambda x: teacher.structured(messages(("user", x)), Item, max_tokens=32)[0], items,
                               progress=lambda d, t: None)

        week1 = [f"paper {i}" for i in range(40)]
        first = run(week1)
        assert server.requests == 40 and all(first)
        week2 = week1[4:] + [f"new paper {i}" for i in range(4)]  # 10% new
        server.clear()
        second = run(week2)
        assert server.requests == 4 and teacher.stats.completions == 4 and teacher.stats.cache_hits == 36
        assert second[:36] == first[4:]
