"""The collect task: incremental snapshots in the store, and the Prefect wrapper under the test harness."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from tasks.collect.records import QAPair
from tasks.collect.sources import read_records_jsonl, source_fingerprint
from tasks.collect.tasks import collect_into_store, collect_source_task, merge_records, state_key
from tasks.core.recipe import SourceConfig
from tasks.core.store import LocalStore, PointerConflict

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AI_DUMP = REPO / "data" / "sample" / "stackexchange" / "ai.stackexchange.com" / "Posts.xml"


def _dump_with_first_pairs(target: Path, pairs: int) -> None:
    """A real dump cut to the rows of its first ``pairs`` Q/A pairs (rows copied, never edited)."""
    text = AI_DUMP.read_text(encoding="utf-8-sig")
    rows = [line for line in text.splitlines() if line.lstrip().startswith("<row")]
    questions = [r for r in rows if 'PostTypeId="1"' in r][:pairs]
    wanted = {re.search(r'AcceptedAnswerId="(\d+)"', q).group(1) for q in questions}
    keep = set(questions) | {r for r in rows if re.search(r'<row Id="(\d+)"', r).group(1) in wanted}
    body = "\n".join(r for r in rows if r in keep)
    target.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n{body}\n</posts>', encoding="utf-8")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    from tasks.core.settings import get_settings

    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DISTILLERY_STORE_URI", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_snapshots_grow_incrementally_without_duplicates(home):
    store = LocalStore(home / "store")
    dump = home / "dump" / "Posts.xml"
    dump.parent.mkdir()
    _dump_with_first_pairs(dump, 30)
    source = SourceConfig(
        kind="stackexchange_dump", path=str(dump.parent), options={"site": "ai.stackexchange.com"}
    )

    first = collect_into_store(source, "stats-qa", store)
    assert first.counts == {
        "collected": 30,
        "new": 30,
        "updated": 0,
        "unchanged": 0,
        "rejected": 0,
        "watermark": first.counts["watermark"],
    }
    assert first["records"].rows == 30 and first["records"].kind == "records"
    assert first["rejected"].kind == "rejected" and first["rejected"].rows == 0

    # The same content again: nothing new, nothing duplicated, the same records artifact.
    again = collect_into_store(source, "stats-qa", store)
    assert again.counts["new"] == 0 and again.counts["collected"] == 30
    assert again["records"].sha256 == first["records"].sha256

    # Next week's dump has 30 more pairs, some older than the watermark: they are still collected.
    _dump_with_first_pairs(dump, 60)
    grown = collect_into_store(source, "stats-qa", store)
    assert grown.counts["new"] == 30 and grown.counts["collected"] == 60 and grown.counts["updated"] == 0
    records = read_records_jsonl(store.local_path(grown["records"]))
    assert len(records) == len({r.id for r in records}) == 60
    assert all(isinstance(r, QAPair) for r in records)
    state = json.loads(store.read_key(state_key("stats-qa", source)))
    assert (
        state["records"]["sha256"] == grown["records"].sha256
        and state["watermark"] == grown.counts["watermark"]
    )


def test_a_lost_records_object_means_collecting_from_scratch(home):
    store = LocalStore(home / "store")
    source = SourceConfig(kind="stackexchange_dump", path=str(AI_DUMP.parent))
    first = collect_into_store(source, "r", store)
    store.local_path(first["records"]).unlink()
    again = collect_into_store(source, "r", store)
    assert again.counts["new"] == 60 and again.counts["collected"] == 60  # not skipped by a stale watermark


def test_a_concurrent_writer_is_detected(home, monkeypatch):
    store = LocalStore(home / "store")
    source = SourceConfig(kind="stackexchange_dump", path=str(AI_DUMP.parent), limit=3)
    key = state_key("r", source)
    original = store.read_key

    def racing_read(k):
        data = original(k)
        if k == key:
            store.write_pointer(key, b'{"records": null}', expected=data)  # someone else moves the state
        return data

    monkeypatch.setattr(store, "read_key", racing_read)
    with pytest.raises(PointerConflict):
        collect_into_store(source, "r", store)


def test_merge_replaces_changed_records_by_id():
    old = QAPair(id="a", source="s", title="t", question="q", answer="old")
    new = QAPair(id="a", source="s", title="t", question="q", answer="new")
    other = QAPair(id="b", source="s", title="t", question="q", answer="x")
    merged, added, replaced = merge_records([old], [new, other])
    assert merged == [new, other] and (added, replaced) == (1, 1)


@pytest.fixture(scope="module")
def collect_prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_prefect_task_runs_caches_and_reads_a_secret_block(collect_prefect_harness, home, monkeypatch):
    from prefect import flow
    from prefect.blocks.system import Secret

    source = SourceConfig(kind="stackexchange_dump", path=str(AI_DUMP.parent), limit=10)
    fingerprint = source_fingerprint(source)

    @flow
    def collect_twice() -> tuple:
        first = collect_source_task(source, fingerprint, "stats-qa")
        second = collect_source_task(source, fingerprint, "stats-qa")
        return first, second

    first, second = collect_twice()
    assert first.counts["collected"] == 10 and first.counts["new"] == 10
    assert second == first  # a cache hit: same inputs, same collector source

    # The PostgreSQL DSN can come from a Secret block instead of settings.
    import psycopg
    from psycopg import sql

    schema = f"collect_task_{uuid.uuid4().hex[:8]}"
    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    block = f"collect-test-dsn-{uuid.uuid4().hex[:8]}"
    Secret(value=dsn).save(block)
    monkeypatch.delenv("DISTILLERY_POSTGRES_DSN", raising=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        ident = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        try:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.user_profiles (id serial PRIMARY KEY, handle text, bio text)"
                ).format(ident)
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.profile_scores (id serial PRIMARY KEY, profile_id int, score real, "
                    "reason text, scored_by text, created_at timestamptz, updated_at timestamptz)"
                ).format(ident)
            )
            conn.execute(
                sql.SQL("INSERT INTO {}.user_profiles (handle, bio) VALUES ('@ada', 'Analyst')").format(ident)
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.profile_scores (profile_id, score, reason, scored_by, created_at) "
                    "VALUES (1, 0.8, 'ok', 'gpt-4o', now())"
                ).format(ident)
            )
            pg = SourceConfig(
                kind="postgres", query="gpt-4o", options={"schema": schema, "secret_block": block}
            )

            @flow
            def collect_profiles_flow():
                return collect_source_task(pg, source_fingerprint(pg), "profile-scorer")

            out = collect_profiles_flow()
            assert out.counts["collected"] == 1
            records = read_records_jsonl(Path(out["records"].uri.removeprefix("file://")))
            assert records[0].handle == "@ada"
            assert dsn not in Path(out["records"].uri.removeprefix("file://")).read_text()
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident))


def test_a_wrong_source_entry_fails_at_once_and_a_service_failure_is_retried(
    collect_prefect_harness, home, monkeypatch
):
    from prefect import flow

    import tasks.collect.tasks as collect_tasks
    from tasks.collect.common import CollectError

    tries: list[str] = []
    real_collect = collect_tasks.collect_source

    def counted(source, **kwargs):
        tries.append(source.kind)
        return real_collect(source, **kwargs)

    def unreachable(source, **kwargs):
        tries.append(source.kind)
        raise CollectError("stackexchange_api /questions: gave up after 5 tries: HTTP 503")

    # Without delays, so a retried failure costs no time either.
    fast_task = collect_source_task.with_options(retry_delay_seconds=0)
    recipe = f"retry-{uuid.uuid4().hex[:8]}"

    def run_once(source: SourceConfig) -> tuple[bool, str]:
        @flow
        def collect_one() -> tuple[bool, str]:
            state = fast_task(source, source_fingerprint(source), recipe, return_state=True)
            return state.is_failed(), state.message or ""

        tries.clear()
        return collect_one()

    monkeypatch.setattr(collect_tasks, "collect_source", counted)
    missing_dump = SourceConfig(kind="stackexchange_dump", path=str(home / "no-dump" / "Posts.xml"))
    failed, message = run_once(missing_dump)
    assert failed and "SourceConfigError" in message and "does not exist" in message
    assert tries == ["stackexchange_dump"]

    no_block = SourceConfig(
        kind="postgres", query="gpt-4o", options={"secret_block": f"absent-{uuid.uuid4().hex[:8]}"}
    )
    failed, message = run_once(no_block)
    assert failed and "cannot load Secret block" in message
    assert tries == ["postgres"]

    monkeypatch.setattr(collect_tasks, "collect_source", unreachable)
    failed, message = run_once(SourceConfig(kind="stackexchange_api", query="ai"))
    assert failed and "HTTP 503" in message
    assert tries == ["stackexchange_api"] * 3  # the first try and both retries


def test_a_failed_service_falls_back_on_its_last_snapshot_and_the_run_goes_on(collect_prefect_harness, home,
                                                                               monkeypatch):
    # This module's own harness: entering the session's while the module's is active would be undone
    # when the module's exits, leaving later tests without an API URL.
    import flows.collect
    from flows.collect import collect_flow
    from tasks.collect.common import CollectError, SourceConfigError
    from tasks.core.recipe import load_recipe
    from tests.fakes.replay_server import Canned, running_replay_server

    # Every run really runs its tasks (no cache hit), with no delay between the task's retries.
    monkeypatch.setattr(flows.collect, "collect_source_task",
                        collect_source_task.with_options(retry_delay_seconds=0, refresh_cache=True))

    def recipe(*sources: str):
        return load_recipe("stats-qa", [f"collect.sources=[{', '.join(sources)}]"])

    dump = f"{{kind: stackexchange_dump, path: {AI_DUMP}, limit: 5}}"
    with running_replay_server() as server:
        api = (f"{{kind: stackexchange_api, query: ai.stackexchange.com, limit: 8, "
               f"options: {{base_url: '{server.url}/se/2.3', page_size: 4, retry_attempts: 2, retry_base_delay_s: 0.01}}}}")
        first = collect_flow(recipe(dump, api))
        assert first.status == "completed" and first.reason is None
        snapshot = first.output("1-stackexchange_api")["records"]
        assert first.output("1-stackexchange_api").counts["collected"] == 8

        server.script("/se/", [Canned(503)] * 100)  # the service is down this week
        down = collect_flow(recipe(dump, api))
        assert down.status == "completed"
        assert down.reason.startswith("degraded: source 1-stackexchange_api failed; its snapshot of ")
        assert "HTTP 503" in down.reason
        assert down.output("1-stackexchange_api")["records"] == snapshot  # nothing new, nothing lost
        assert down.output("0-stackexchange_dump").counts["collected"] == 5

        # A source that never succeeded has nothing to stand in: the others still go on...
        new_api = api.replace("page_size: 4", "page_size: 5")
        partial = collect_flow(recipe(dump, new_api))
        assert list(partial.outputs) == ["0-stackexchange_dump"]
        assert "source 1-stackexchange_api failed and has no earlier snapshot" in partial.reason
        # ...but a run in which no source gives anything fails.
        with pytest.raises(CollectError, match="every source failed"):
            collect_flow(recipe(new_api))
    # A wrong entry is not a service outage: it fails the stage even when other sources are fine.
    with pytest.raises(SourceConfigError, match="does not exist"):
        collect_flow(recipe(dump, "{kind: stackexchange_dump, path: /no/such/Posts.xml}"))
