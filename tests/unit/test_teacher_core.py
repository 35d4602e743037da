"""The Teacher facade with in-memory providers: cache, retries, budget, structured outputs, map."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from tasks.core.recipe import TeacherConfig
from tasks.teacher import teacher as teacher_module
from tasks.teacher.base import (
    BudgetExhausted,
    Completion,
    CompletionRequest,
    QuotaExhausted,
    RateLimitDeferred,
    RetriesExhausted,
    TeacherError,
    TransientError,
    messages,
)
from tasks.teacher.cache import RequestCache
from tasks.teacher.limits import Prices
from tasks.teacher.progress import GenerationProgress
from tasks.teacher.retry import RetryPolicy
from tasks.teacher.runner import run_sync
from tasks.teacher.teacher import Teacher, TeacherStats, fresh_stats
from tasks.teacher.worst_case import worst_case_chars

FAST = RetryPolicy(max_retries=3, backoff_base_s=0.001, backoff_max_s=0.01, max_wait_s=60)


class Answer(BaseModel):
    answer: str
    confidence: int


class ScriptedProvider:
    """A synchronous provider: each call pops the next outcome (an exception or a text), else answers."""

    provider = "fake"
    model = "fake-model"

    def __init__(self, *outcomes: Any, answer: Callable[[CompletionRequest], str] | None = None,
                 delay_s: float = 0.0):
        self.outcomes = list(outcomes)
        self.calls: list[CompletionRequest] = []
        self.answer = answer or (lambda r: f'{{"answer": "{r.messages[-1].content[:10]}", "confidence": 3}}')
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> Completion:
        with self._lock:
            self.calls.append(request)
            outcome = self.outcomes.pop(0) if self.outcomes else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if isinstance(outcome, BaseException):
            raise outcome
        text = outcome if isinstance(outcome, str) else self.answer(request)
        return Completion(text=text, prompt_tokens=10, completion_tokens=5, finish_reason="stop")


class AsyncProvider(ScriptedProvider):
    """The same, async, to show requests really overlap."""

    def __init__(self, *outcomes: Any, delay_s: float = 0.1):
        super().__init__(*outcomes, delay_s=0.0)
        self.async_delay = delay_s
        self.in_flight = 0
        self.peak = 0

    async def acomplete(self, request: CompletionRequest) -> Completion:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.async_delay)
            return self.complete(request)
        finally:
            self.in_flight -= 1


def _request(text: str = "q", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(messages=messages(("user", text)), **kwargs)


def _transient(kind: str = "server", after: float | None = None) -> TransientError:
    return TransientError(f"fake {kind}", kind=kind, status=429 if kind == "rate_limit" else 503,  # type: ignore[arg-type]
                          retry_after_s=after)


@pytest.fixture
def cache(tmp_path):
    cache = RequestCache(tmp_path / "teacher.sqlite")
    yield cache
    cache.close()


# -- cache ----------------------------------------------------------------------------------------


def test_second_identical_request_comes_from_the_durable_cache(tmp_path, cache):
    provider = ScriptedProvider()
    teacher = Teacher(provider, cache, retry=FAST)
    first = teacher.complete(_request())
    second = teacher.complete(_request())
    assert not first.cached and second.cached and second.text == first.text
    assert len(provider.calls) == 1
    assert teacher.stats.requests == 1 and teacher.stats.cache_hits == 1 and teacher.stats.completions == 1
    # Durable: a new process (a new cache object on the same file) still has it.
    again = Teacher(ScriptedProvider(), RequestCache(tmp_path / "teacher.sqlite"))
    assert again.complete(_request()).cached


def test_identical_requests_in_flight_are_paid_once(cache):
    provider = ScriptedProvider(delay_s=0.2)
    teacher = Teacher(provider, cache, concurrency=8, retry=FAST)
    results = teacher.map(lambda _: teacher.complete(_request("same")).text, list(range(8)), concurrency=8,
                          progress=lambda d, t: None)
    assert len(set(results)) == 1
    assert len(provider.calls) == 1
    assert teacher.stats.cache_hits == 7 and teacher.stats.completions == 1


# -- retries ---------------------------------------------------------------------------------------


def test_transient_errors_are_retried_and_counted():
    provider = ScriptedProvider(_transient("server"), _transient("timeout"), _transient("connection"))
    teacher = Teacher(provider, retry=FAST)
    teacher.complete(_request())
    assert len(provider.calls) == 4
    stats = teacher.stats
    assert (stats.requests, stats.retries, stats.completions, stats.server_errors, stats.timeouts) == (4, 3, 1, 1, 1)


def test_retries_are_bounded_by_max_retries():
    provider = ScriptedProvider(*[_transient("server") for _ in range(10)])
    teacher = Teacher(provider, retry=FAST)
    with pytest.raises(RetriesExhausted, match="4 attempts") as info:
        teacher.complete(_request())
    assert len(provider.calls) == 1 + FAST.max_retries == info.value.attempts
    assert teacher.stats.failures == 1 and teacher.stats.completions == 0


def test_quota_fails_fast():
    provider = ScriptedProvider(QuotaExhausted("out of quota"))
    teacher = Teacher(provider, retry=FAST)
    with pytest.raises(QuotaExhausted):
        teacher.complete(_request())
    assert len(provider.calls) == 1


@pytest.mark.parametrize("after", [90, 3600])
def test_long_retry_after_defers_without_waiting(after):
    provider = ScriptedProvider(_transient("rate_limit", after))
    teacher = Teacher(provider, retry=FAST)
    start = time.monotonic()
    with pytest.raises(RateLimitDeferred) as info:
        teacher.complete(_request())
    assert info.value.wait_s == after and time.monotonic() - start < 1
    assert len(provider.calls) == 1 and teacher.stats.rate_limited == 1


def test_short_retry_after_is_waited_for():
    provider = ScriptedProvider(_transient("rate_limit", 0.3))
    teacher = Teacher(provider, retry=FAST)
    start = time.monotonic()
    teacher.complete(_request())
    assert time.monotonic() - start >= 0.3
    assert len(provider.calls) == 2 and teacher.stats.backoff_s >= 0.3


def test_final_errors_are_not_retried():
    provider = ScriptedProvider(TeacherError("HTTP 400"))
    with pytest.raises(TeacherError, match="400"):
        Teacher(provider, retry=FAST).complete(_request())
    assert len(provider.calls) == 1


# -- structured outputs ----------------------------------------------------------------------------


def test_invalid_output_is_repaired():
    provider = ScriptedProvider('{"answer": "x"}', '```json\n{"answer": "y", "confidence": 2}\n```')
    teacher = Teacher(provider, retry=FAST)
    value, reason = teacher.structured(messages(("user", "q")), Answer, max_repairs=1)
    assert value == Answer(answer="y", confidence=2) and reason is None
    assert teacher.stats.repairs == 1 and teacher.stats.rejects == 0
    repair = provider.calls[1]
    assert repair.messages[-2].content == '{"answer": "x"}' and "confidence" in repair.messages[-1].content
    assert repair.json_schema == Answer.model_json_schema() and repair.seed == 1


def test_output_that_never_validates_becomes_a_reject_with_its_reason():
    provider = ScriptedProvider("not json", "still not", "nope")
    teacher = Teacher(provider, retry=FAST)
    value, reason = teacher.structured(messages(("user", "q")), Answer, max_repairs=2)
    assert value is None and reason.startswith("not JSON")
    assert len(provider.calls) == 3 and teacher.stats.rejects == 1 and teacher.stats.repairs == 2


def test_cut_off_output_says_so():
    class Cut(ScriptedProvider):
        def complete(self, request):
            return Completion(text='{"answer": "x', finish_reason="length", completion_tokens=5)

    value, reason = Teacher(Cut(), retry=FAST).structured(messages(("user", "q")), Answer, max_repairs=0)
    assert value is None and reason == "output cut off at max_tokens"


class Bounded(BaseModel):
    verdict: Literal["yes", "no"]
    reason: str = Field(max_length=40)


def test_structured_output_is_sized_to_its_schema_unless_the_caller_caps_it():
    provider = ScriptedProvider(answer=lambda r: '{"verdict": "yes", "reason": "ok"}')
    teacher = Teacher(provider, retry=FAST)
    teacher.structured(messages(("user", "bounded")), Bounded)
    teacher.structured(messages(("user", "unbounded")), Answer, max_repairs=0)
    teacher.structured(messages(("user", "capped")), Bounded, max_tokens=16)
    assert [c.max_tokens for c in provider.calls] == [worst_case_chars(Bounded.model_json_schema()),
                                                      teacher_module.DEFAULT_MAX_TOKENS, 16]


# -- budget ----------------------------------------------------------------------------------------


def test_budget_stops_map_cleanly_and_keeps_what_was_generated(cache):
    provider = ScriptedProvider()
    # Each request reserves its worst case: ~13 prompt tokens (estimate) + max_tokens 20.
    teacher = Teacher(provider, cache, max_total_tokens=100, retry=FAST)
    items = [f"item {i}" for i in range(10)]
    results = teacher.map(lambda it: teacher.complete(_request(it, max_tokens=20)).text, items, concurrency=1,
                          progress=lambda d, t: None)
    assert 0 < len(results) < len(items)
    assert results == [provider.answer(_request(it)) for it in items[: len(results)]]
    stats = teacher.stats
    assert stats.budget_stopped and "max_total_tokens=100" in stats.stop_reason
    assert stats.skipped == len(items) - len(results)
    assert stats.total_tokens <= 100
    # Cached answers are free: they are still served after the stop, and no new request is paid.
    paid = len(provider.calls)
    assert teacher.complete(_request(items[0], max_tokens=20)).cached
    with pytest.raises(BudgetExhausted):
        teacher.complete(_request("new", max_tokens=20))
    assert len(provider.calls) == paid


def test_cost_is_counted_and_capped():
    provider = ScriptedProvider()
    teacher = Teacher(provider, max_cost=0.05, prices=Prices(prompt_per_1k=1.0, completion_per_1k=2.0), retry=FAST)
    teacher.complete(_request("a", max_tokens=5))
    assert teacher.stats.cost == pytest.approx((10 * 1.0 + 5 * 2.0) / 1000)
    with pytest.raises(BudgetExhausted, match="cost budget"):
        for i in range(10):
            teacher.complete(_request(f"b{i}", max_tokens=5))
    assert teacher.stats.cost <= 0.05


def test_budget_is_per_flow_run(monkeypatch):
    run = {"id": "run-1"}
    monkeypatch.setattr(teacher_module, "_current_run_id", lambda: run["id"])
    teacher = Teacher(ScriptedProvider(), max_total_tokens=60, retry=FAST)
    teacher.complete(_request("a", max_tokens=20))
    with pytest.raises(BudgetExhausted):
        teacher.complete(_request("b", max_tokens=40))
    run["id"] = "run-2"  # next week's run has its own budget
    teacher.complete(_request("b", max_tokens=20))


def test_cost_cap_needs_prices():
    with pytest.raises(ValueError, match="prices"):
        Teacher(ScriptedProvider(), max_cost=1.0)


# -- concurrency and limits --------------------------------------------------------------------------


def test_requests_overlap_up_to_the_concurrency_limit():
    provider = AsyncProvider(delay_s=0.1)
    teacher = Teacher(provider, concurrency=4, retry=FAST)
    start = time.monotonic()
    out = teacher.map(lambda i: teacher.complete(_request(f"q{i}")).text, list(range(16)), concurrency=16,
                      progress=lambda d, t: None)
    elapsed = time.monotonic() - start
    assert len(out) == 16 and provider.peak == 4
    assert elapsed < 0.1 * 16 / 2  # well under sequential


def test_client_side_rate_limit_paces_requests():
    provider = AsyncProvider(delay_s=0.0)
    teacher = Teacher(provider, concurrency=8, requests_per_minute=1200, burst_s=0.1, retry=FAST)  # 20/s, burst 2
    start = time.monotonic()
    teacher.map(lambda i: teacher.complete(_request(f"q{i}")), list(range(12)), concurrency=8,
                progress=lambda d, t: None)
    assert time.monotonic() - start >= (12 - 2) / 20 * 0.95


def test_client_side_token_limit_paces_requests():
    provider = AsyncProvider(delay_s=0.0)  # each answer uses 15 tokens
    teacher = Teacher(provider, concurrency=4, tokens_per_minute=60 * 100, burst_s=0.2, retry=FAST)  # 100/s, 20
    start = time.monotonic()
    teacher.map(lambda i: teacher.complete(_request(f"q{i}", max_tokens=5)), list(range(8)), concurrency=4,
                progress=lambda d, t: None)
    # Each request reserves its estimate (~13 + 5 tokens) and settles at 15: about 8 * 15 - 20 tokens to wait for.
    assert time.monotonic() - start >= (8 * 15 - 20) / 100 * 0.8


def test_rate_limit_pause_holds_every_request():
    provider = AsyncProvider(_transient("rate_limit", 0.3), delay_s=0.0)
    teacher = Teacher(provider, concurrency=4, requests_per_minute=6000, retry=FAST)
    start = time.monotonic()
    teacher.complete(_request("first"))
    teacher.complete(_request("second"))
    assert time.monotonic() - start >= 0.3


# -- map -----------------------------------------------------------------------------------------


def test_map_keeps_order_and_reports_progress():
    teacher = Teacher(ScriptedProvider(), retry=FAST)
    calls = []
    out = teacher.map(lambda x: x * 2, [3, 1, 2], concurrency=3, progress=lambda d, t: calls.append((d, t)))
    assert out == [6, 2, 4]
    assert calls[-1] == (3, 3) and len(calls) == 3


def test_map_raises_other_errors_and_starts_no_new_items():
    teacher = Teacher(ScriptedProvider(), retry=FAST)
    started = []

    def fn(i):
        started.append(i)
        if i == 1:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError, match="boom"):
        teacher.map(fn, list(range(20)), concurrency=1, progress=lambda d, t: None)
    assert started == [0, 1]


def test_map_draws_its_own_bar_without_a_progress_callback(monkeypatch):
    stream = io.StringIO()
    real = GenerationProgress

    def to_stream(*args, **kwargs):
        return real(*args, **{**kwargs, "file": stream})

    monkeypatch.setattr(teacher_module, "GenerationProgress", to_stream)
    teacher = Teacher(ScriptedProvider(), retry=FAST)
    teacher.map(lambda x: teacher.complete(_request(str(x))), [1, 2, 3], concurrency=2, desc="grounded qa")
    assert "grounded qa" in stream.getvalue() and "3/3" in stream.getvalue()
    assert "3 paid" in stream.getvalue()


def test_progress_outside_prefect_makes_no_artifact():
    progress = GenerationProgress(3, "x", file=io.StringIO())
    progress.advance(3)
    progress.close()
    assert progress.artifact_id is None


def test_blocking_call_from_the_teacher_loop_is_refused():
    teacher = Teacher(ScriptedProvider(), retry=FAST)

    async def inside():
        teacher.complete(_request())

    with pytest.raises(RuntimeError, match="await the async method"):
        run_sync(inside())


def test_async_api_works_from_any_loop():
    teacher = Teacher(AsyncProvider(delay_s=0.01), retry=FAST)

    async def main():
        return await asyncio.gather(*(teacher.astructured(messages(("user", f"q{i}")), Answer) for i in range(3)))

    results = asyncio.run(main())
    assert all(value is not None and reason is None for value, reason in results)


# -- configuration -----------------------------------------------------------------------------------


def test_from_config_reads_limits_and_optional_fields_defensively():
    config = TeacherConfig(provider="openai", model="m", base_url="http://127.0.0.1:1/v1", requests_per_minute=600,
                           tokens_per_minute=60000, max_total_tokens=1000, concurrency=3)
    teacher = Teacher.from_config(config, provider=ScriptedProvider(), share=0.5)
    assert teacher.concurrency == 3 and teacher.max_total_tokens == 500
    assert teacher.limiter.requests.rate == pytest.approx(5.0)  # 600/min halved
    assert teacher.limiter.tokens.rate == pytest.approx(500.0)
    assert teacher.retry == RetryPolicy()  # fields the config lacks fall back to defaults


def test_get_teacher_is_one_per_config_and_fresh_stats_resets(tmp_path, monkeypatch):
    from tasks.core.settings import get_settings

    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    get_settings.cache_clear()
    built = []
    monkeypatch.setattr(teacher_module, "build_provider", lambda c: built.append(c) or ScriptedProvider())
    teacher_module.clear_teachers()
    try:
        config = TeacherConfig(provider="openai", model="m", base_url="http://127.0.0.1:1/v1")
        teacher = teacher_module.get_teacher(config)
        assert teacher_module.get_teacher(config) is teacher and len(built) == 1
        teacher.complete(_request())
        assert (tmp_path / "cache" / "teacher.sqlite").exists()
        stats = fresh_stats(teacher)
        assert stats == TeacherStats() and teacher.stats is stats
        # Another config for the same endpoint shares the provider, not the limiter or the counters.
        other = teacher_module.get_teacher(config.model_copy(update={"concurrency": 7}))
        assert other is not teacher and other.provider is teacher.provider and len(built) == 1
    finally:
        teacher_module.clear_teachers()
        get_settings.cache_clear()
