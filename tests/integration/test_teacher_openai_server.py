"""The OpenAI-compatible provider over real HTTP, against the fake server's scripted faults."""

from __future__ import annotations

import logging
import time

import pytest
from pydantic import BaseModel, Field

from tasks.core.recipe import TeacherConfig
from tasks.teacher.base import (
    CompletionRequest,
    QuotaExhausted,
    RateLimitDeferred,
    RetriesExhausted,
    TeacherError,
    messages,
)
from tasks.teacher.cache import RequestCache
from tasks.teacher.openai_compat import OpenAIChat
from tasks.teacher.teacher import Teacher
from tests.fakes.openai_server import Fault, OpenAIServer

pytestmark = pytest.mark.integration

CANARY = "sk-CANARY-7f3a9c1e5b2d4e6f8a0b"
KEY_ENV = "FAKE_TEACHER_KEY"


class TestConfig(TeacherConfig):
    """The recipe's teacher section plus the fields this layer reads with defaults (see the report)."""

    __test__ = False
    max_retries: int = 3
    retry_backoff_s: float = 0.02
    max_wait_s: float = 60.0
    request_timeout_s: float = 2.0
    limiter_burst_s: float = 1.0
    price_per_1k_prompt_tokens: float | None = None
    price_per_1k_completion_tokens: float | None = None
    max_cost: float | None = None


class Review(BaseModel):
    summary: str = Field(description="One paragraph.")
    strengths: list[str]
    rating: int = Field(ge=1, le=10)
    accept: bool


@pytest.fixture
def server():
    with OpenAIServer() as srv:
        yield srv


def make_teacher(server: OpenAIServer, tmp_path, monkeypatch, **config: object) -> Teacher:
    monkeypatch.setenv(KEY_ENV, CANARY)
    cfg = TestConfig(provider="openai", model="fake-teacher", base_url=server.base_url, api_key_env=KEY_ENV,
                     **config)
    return Teacher.from_config(cfg, cache=RequestCache(tmp_path / "teacher.sqlite"))


def ask(i: int | str = 0, **kwargs: object) -> CompletionRequest:
    return CompletionRequest(messages=messages(("user", f"question {i}")), max_tokens=32, **kwargs)


def test_structured_output_follows_the_schema_and_sends_the_key(server, tmp_path, monkeypatch):
    server.api_key = CANARY
    teacher = make_teacher(server, tmp_path, monkeypatch)
    value, reason = teacher.structured(messages(("user", "Review this paper.")), Review, max_tokens=64)
    assert reason is None and isinstance(value, Review) and 1 <= value.rating <= 10
    body = server.log[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == Review.model_json_schema()
    assert body["model"] == "fake-teacher" and server.log[0].authorized
    assert teacher.stats.completions == 1 and teacher.stats.total_tokens > 0


def test_log_probabilities_are_asked_for_and_come_back_per_token(server, tmp_path, monkeypatch):
    teacher = make_teacher(server, tmp_path, monkeypatch)
    completion = teacher.complete(ask("logprobs", top_logprobs=3))
    assert server.log[0].body["logprobs"] is True and server.log[0].body["top_logprobs"] == 3
    tokens = completion.text.split(" ")
    assert len(completion.top_logprobs) == len(tokens)
    first = completion.top_logprobs[0]
    assert len(first) == 3 and max(first, key=first.get) == tokens[0] and all(lp < 0 for lp in first.values())
    assert teacher.complete(ask("logprobs", top_logprobs=3)).top_logprobs == completion.top_logprobs  # cached
    assert teacher.complete(ask("plain")).top_logprobs == () and "logprobs" not in server.log[-1].body


def test_requests_are_in_flight_together_up_to_the_concurrency(server, tmp_path, monkeypatch):
    # What concurrency buys in wall time is measured by bench/teacher_throughput.py; here, the server's
    # own log shows how many requests it held at once (no timing threshold a loaded machine could miss).
    server.latency_s = 0.2
    teacher = make_teacher(server, tmp_path, monkeypatch, concurrency=8)
    out = teacher.map(lambda i: teacher.complete(ask(i)).text, list(range(16)), progress=lambda d, t: None)
    assert len(out) == 16 and server.requests == 16
    events = sorted([(r.arrived, 1) for r in server.log] + [(r.finished, -1) for r in server.log])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert 4 <= peak <= 8  # one at a time would be 1; never more than the limit


def test_retry_after_is_obeyed(server, tmp_path, monkeypatch):
    server.script(Fault.rate_limit("1"))
    teacher = make_teacher(server, tmp_path, monkeypatch)
    teacher.complete(ask())
    assert server.statuses() == [429, 200]
    gap = server.log[1].arrived - server.log[0].arrived
    assert 1.0 <= gap < 1.6
    assert teacher.stats.rate_limited == 1 and teacher.stats.retries == 1


@pytest.mark.parametrize("after", ["90", "3600"])
def test_long_retry_after_defers_the_stage(server, tmp_path, monkeypatch, after):
    server.script(Fault.rate_limit(after))
    teacher = make_teacher(server, tmp_path, monkeypatch)
    start = time.monotonic()
    with pytest.raises(RateLimitDeferred) as info:
        teacher.complete(ask())
    assert info.value.wait_s == float(after) and time.monotonic() - start < 1.0
    assert server.requests == 1


def test_quota_error_fails_fast_with_a_clear_message(server, tmp_path, monkeypatch):
    server.script(Fault.quota())
    teacher = make_teacher(server, tmp_path, monkeypatch)
    with pytest.raises(QuotaExhausted, match="out of quota.*insufficient_quota"):
        teacher.complete(ask())
    assert server.requests == 1 and teacher.stats.retries == 0


def test_a_burst_of_5xx_is_retried(server, tmp_path, monkeypatch):
    server.script(Fault.server_error(503), Fault.server_error(502), Fault.server_error(500, retry_after="0"))
    teacher = make_teacher(server, tmp_path, monkeypatch)
    assert teacher.complete(ask()).text
    assert server.statuses() == [503, 502, 500, 200]
    assert teacher.stats.retries == 3 and teacher.stats.server_errors == 3 and teacher.stats.completions == 1


def test_calls_stay_within_max_retries(server, tmp_path, monkeypatch):
    server.script(*[Fault.server_error(500)] * 10)
    teacher = make_teacher(server, tmp_path, monkeypatch, max_retries=2)
    with pytest.raises(RetriesExhausted, match="3 attempts"):
        teacher.complete(ask())
    assert server.requests == 3


def test_a_hung_request_times_out_and_is_retried(server, tmp_path, monkeypatch):
    server.script(Fault.hang())
    teacher = make_teacher(server, tmp_path, monkeypatch, request_timeout_s=0.5)
    start = time.monotonic()
    assert teacher.complete(ask()).text
    assert 0.5 <= time.monotonic() - start < 3
    assert server.requests == 2 and teacher.stats.timeouts == 1


def test_malformed_json_is_repaired(server, tmp_path, monkeypatch):
    server.script(Fault("malformed_json"))
    teacher = make_teacher(server, tmp_path, monkeypatch)
    value, reason = teacher.structured(messages(("user", "Review it.")), Review, max_repairs=1)
    assert isinstance(value, Review) and reason is None
    assert server.requests == 2 and teacher.stats.repairs == 1
    assert server.log[1].body["messages"][-2]["content"].startswith('{"answer": "unterminated')


def test_output_that_never_follows_the_schema_is_rejected(server, tmp_path, monkeypatch):
    server.on_prompt("Review", *[Fault("schema_violation")] * 3)
    teacher = make_teacher(server, tmp_path, monkeypatch)
    value, reason = teacher.structured(messages(("user", "Review it.")), Review, max_repairs=2)
    assert value is None and "Field required" in reason
    assert server.requests == 3 and teacher.stats.rejects == 1


def test_truncated_output_is_rejected_with_the_reason(server, tmp_path, monkeypatch):
    server.script(Fault("truncated"))
    teacher = make_teacher(server, tmp_path, monkeypatch)
    value, reason = teacher.structured(messages(("user", "Review it.")), Review, max_repairs=0)
    assert value is None and reason == "output cut off at max_tokens"


@pytest.mark.parametrize("kind", ["bad_body", "no_choices"])
def test_malformed_envelopes_are_retried(server, tmp_path, monkeypatch, kind):
    server.script(Fault(kind))  # type: ignore[arg-type]
    teacher = make_teacher(server, tmp_path, monkeypatch)
    assert teacher.complete(ask()).text.startswith("Answer")
    assert server.requests == 2 and teacher.stats.retries == 1


def test_client_limiter_keeps_under_the_enforced_limit(server, tmp_path, monkeypatch):
    # 20/s; the client's burst (2) is below the server's (6): the slack absorbs scheduling jitter.
    server.set_rate_limit(rpm=1200, burst=6)
    teacher = make_teacher(server, tmp_path, monkeypatch, requests_per_minute=1200, concurrency=8,
                           limiter_burst_s=0.1)
    start = time.monotonic()
    teacher.map(lambda i: teacher.complete(ask(i)), list(range(30)), progress=lambda d, t: None)
    elapsed = time.monotonic() - start
    assert set(server.statuses()) == {200}  # never refused
    assert elapsed >= (30 - 2) / 20 * 0.95


def test_without_a_client_limit_the_server_429s_are_absorbed(server, tmp_path, monkeypatch):
    server.set_rate_limit(rpm=1200, burst=2)
    teacher = make_teacher(server, tmp_path, monkeypatch, concurrency=4, max_retries=20)
    out = teacher.map(lambda i: teacher.complete(ask(i)).text, list(range(12)), progress=lambda d, t: None)
    assert len(out) == 12 and server.completions == 12
    assert teacher.stats.rate_limited == server.statuses().count(429) > 0


def test_a_cost_budget_stops_generation_cleanly(server, tmp_path, monkeypatch):
    teacher = make_teacher(server, tmp_path, monkeypatch, concurrency=4, max_cost=0.3,
                           price_per_1k_prompt_tokens=0.5, price_per_1k_completion_tokens=1.5)
    items = list(range(40))
    out = teacher.map(lambda i: teacher.structured(messages(("user", f"paper {i}")), Review, max_tokens=16)[0],
                      items, progress=lambda d, t: None)
    stats = teacher.stats
    assert 0 < len(out) < len(items) and all(isinstance(v, Review) for v in out)
    assert stats.budget_stopped and "cost budget" in stats.stop_reason and stats.skipped == len(items) - len(out)
    assert 0 < stats.cost <= 0.3
    assert server.completions == stats.completions  # every paid request is accounted for
    assert stats.cost == pytest.approx((stats.prompt_tokens * 0.5 + stats.completion_tokens * 1.5) / 1000)


def test_prompt_cache_hits_are_counted_and_billed_at_the_cached_price(server, tmp_path, monkeypatch):
    teacher = make_teacher(server, tmp_path, monkeypatch, concurrency=1, price_per_1k_prompt_tokens=2.0,
                           price_per_1k_completion_tokens=8.0, price_per_1k_cached_prompt_tokens=0.5)
    guidelines = " ".join(f"rule{i}" for i in range(1300))  # a long system turn every request shares
    out = teacher.map(lambda i: teacher.complete(CompletionRequest(
        messages=messages(("system", guidelines), ("user", f"question {i}")), max_tokens=8)), list(range(4)),
        progress=lambda d, t: None)
    # The fake caches as OpenAI does: a shared prefix of 1,306 tokens is served as 1,024 + 2 x 128.
    assert [c.cached_prompt_tokens for c in out] == [0, 1280, 1280, 1280]
    stats = teacher.stats
    assert server.completions == stats.completions == 4 and stats.cached_prompt_tokens == 3 * 1280
    assert stats.cost == pytest.approx(((stats.prompt_tokens - 3840) * 2.0 + 3840 * 0.5
                                        + stats.completion_tokens * 8.0) / 1000)
    assert "3840 of" in stats.summary()


def test_the_key_never_appears_in_logs_errors_or_reprs(server, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.DEBUG)
    monkeypatch.setenv("OPENAI_LOG", "debug")
    server.api_key = CANARY
    teacher = make_teacher(server, tmp_path, monkeypatch)
    server.script(Fault.server_error(503), Fault.rate_limit("0"))
    teacher.complete(ask("ok"))  # accepted: the key reached the server
    assert server.log[-1].authorized
    server.api_key = "sk-some-other-key-000000000"  # now the server refuses ours, echoing part of it
    with pytest.raises(TeacherError) as info:
        teacher.complete(ask("refused"))
    assert "401" in str(info.value) and KEY_ENV in str(info.value)
    seen = "\n".join([caplog.text, str(info.value), repr(info.value), repr(teacher), str(teacher.provider),
                      repr(teacher.provider.__dict__), str(teacher.stats.model_dump()), *capsys.readouterr()])
    assert "DEBUG" in caplog.text or caplog.records  # logging was really on
    assert CANARY not in seen and "CANARY" not in seen and CANARY[-4:] not in seen


def test_provider_without_async_loop_works_synchronously(server, monkeypatch):
    from pydantic import SecretStr

    chat = OpenAIChat("fake-teacher", server.base_url, SecretStr(CANARY), timeout_s=2)
    server.script(Fault.server_error(503))
    with pytest.raises(TeacherError) as info:
        chat.complete(ask())  # one attempt: the provider itself never retries
    assert getattr(info.value, "kind", None) == "server" and server.requests == 1
    assert chat.complete(ask()).text.startswith("Answer")
    chat.close()


def test_a_reasoning_model_gets_max_completion_tokens_after_its_first_refusal(tmp_path, monkeypatch):
    with OpenAIServer(reasoning_model=True) as reasoning:
        teacher = make_teacher(reasoning, tmp_path, monkeypatch, concurrency=2)
        first = teacher.complete(ask(0))
        later = teacher.map(lambda i: teacher.complete(ask(i)).text, [1, 2, 3], progress=lambda d, t: None)
        assert first.text and len(later) == 3
        # One refusal, then every request (the refused one again included) names the new parameter.
        assert reasoning.statuses() == [400, 200, 200, 200, 200]
        assert all(r.body["max_completion_tokens"] == 32 and "max_tokens" not in r.body for r in reasoning.log[1:])
        assert teacher.stats.retries == 0 and teacher.stats.completions == 4
        # The same request is the same cache entry whichever name the limit travelled under.
        assert teacher.complete(ask(0)).cached and reasoning.requests == 5


def test_an_endpoint_that_refuses_logprobs_is_asked_without_them_and_the_judge_falls_back(tmp_path, monkeypatch):
    from tasks.validate.judge import judge_pair

    with OpenAIServer(reasoning_model=True) as reasoning:
        teacher = make_teacher(reasoning, tmp_path, monkeypatch)
        result = judge_pair(teacher, "Name a prime.", "7", "8")
        assert result["read_as"] == ["verdict", "verdict"] and 0.0 <= result["preference"] <= 1.0
        refused = [r for r in reasoning.log if r.status == 400]
        assert [sorted({"max_tokens", "logprobs"} & set(r.body)) for r in refused] == [["logprobs", "max_tokens"],
                                                                                       ["logprobs"]]
        assert all("logprobs" not in r.body for r in reasoning.log if r.status == 200)
        assert teacher.provider.logprobs is False and teacher.stats.retries == 0
