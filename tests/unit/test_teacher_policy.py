"""Pure parts of the teacher: retry timing, Retry-After, rate limiting, budgets, keys, request bodies."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from tasks.core.retry_after import parse_retry_after
from tasks.teacher import keys
from tasks.teacher.base import (
    BudgetExhausted,
    CompletionRequest,
    RateLimitDeferred,
    TeacherError,
    TransientError,
    messages,
)
from tasks.teacher.limits import Budget, Prices, RateLimiter, TokenBucket
from tasks.teacher.openai_compat import OpenAIChat, completion_from_response, request_body
from tasks.teacher.retry import RetryPolicy
from tasks.teacher.scale import split
from tasks.teacher.teacher import TeacherStats, extract_json


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "5"}, 5.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"Retry-After": "90"}, 90.0),
    ({"Retry-After": "3600"}, 3600.0),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise header wins
    ({"Retry-After": "-3"}, 0.0),
    ({"Retry-After": "soon"}, None),
    ({"retry-after-ms": "x", "Retry-After": "2"}, 2.0),
    ({}, None),
])
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_date_without_zone_is_utc(monkeypatch):
    # "-0000" says the zone is unknown: read as UTC, not as this machine's local time (set far from it).
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
        unzoned = format_datetime((now + timedelta(seconds=30)).replace(tzinfo=None))
        assert unzoned.endswith("-0000")
        assert parse_retry_after({"Retry-After": unzoned}, now=now.timestamp()) == pytest.approx(30.0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_parse_retry_after_http_date():
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=120), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=120), usegmt=True)
    assert parse_retry_after({"Retry-After": later}, now=now.timestamp()) == pytest.approx(120.0)
    assert parse_retry_after({"Retry-After": earlier}, now=now.timestamp()) == 0.0


# -- retry policy -------------------------------------------------------------------------------


def _rate_limited(after: float | None) -> TransientError:
    return TransientError("429", kind="rate_limit", status=429, retry_after_s=after)


def test_short_retry_after_is_obeyed_never_early():
    policy = RetryPolicy(max_wait_s=60)
    rng = random.Random(0)
    for _ in range(50):
        wait = policy.wait_before_retry(_rate_limited(5), 1, rng)
        assert 5.0 <= wait <= 5.5
    assert 60.0 <= policy.wait_before_retry(_rate_limited(60), 1, rng) <= 61.0


@pytest.mark.parametrize("after", [90, 3600])
def test_long_retry_after_defers_the_stage(after):
    with pytest.raises(RateLimitDeferred) as info:
        RetryPolicy(max_wait_s=60).wait_before_retry(_rate_limited(after), 1, random.Random(0))
    assert info.value.wait_s == after
    assert "defer" in str(info.value) and f"{after}" in str(info.value)


def test_max_wait_is_configurable():
    policy = RetryPolicy(max_wait_s=5)
    assert policy.wait_before_retry(_rate_limited(5), 1, random.Random(0)) >= 5
    with pytest.raises(RateLimitDeferred):
        policy.wait_before_retry(_rate_limited(5.5), 1, random.Random(0))


@given(retry=st.integers(min_value=1, max_value=40), seed=st.integers(0, 2**16),
       base=st.floats(min_value=0.01, max_value=5), cap=st.floats(min_value=0.01, max_value=60))
def test_backoff_is_jittered_within_its_ceiling(retry, seed, base, cap):
    policy = RetryPolicy(backoff_base_s=base, backoff_max_s=cap)
    ceiling = min(cap, base * 2 ** (retry - 1))
    wait = policy.wait_before_retry(TransientError("503", kind="server", status=503), retry, random.Random(seed))
    assert ceiling / 2 - 1e-9 <= wait <= ceiling + 1e-9


def test_backoff_grows_then_caps():
    policy = RetryPolicy(backoff_base_s=1, backoff_max_s=8)
    lows = [policy.backoff(n, random.Random(0)) for n in range(1, 8)]
    assert lows[0] <= 1 and lows[2] >= 2 and all(w <= 8 for w in lows)


# -- rate limiter -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=0.5, max_value=50), burst=st.floats(min_value=1, max_value=10),
       gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=80))
def test_token_bucket_never_lets_more_out_than_the_limit(rate, burst, gaps):
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    start = clock.now
    sends = []
    for gap in gaps:
        clock.now += gap
        sends.append(clock.now + bucket.reserve(1))
    sends.sort()
    # In any window [t_i, t_j], at most burst + rate * (t_j - t_i) requests go out.
    for i in range(len(sends)):
        for j in range(i, len(sends)):
            assert j - i + 1 <= burst + rate * (sends[j] - sends[i]) + 1e-6
    assert sends[0] >= start


def test_token_bucket_paces_at_its_rate_after_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(10, 2, clock)  # 10/s, burst 2
    waits = [bucket.reserve(1) for _ in range(6)]
    assert waits[:2] == [0, 0]
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_token_bucket_lets_an_oversized_request_through_after_a_longer_wait():
    clock = FakeClock()
    bucket = TokenBucket(100, 100, clock)  # 6000 tokens/min
    assert bucket.reserve(300) == pytest.approx(2.0)
    bucket.give_back(300 - 50)  # it used only 50
    assert bucket.reserve(1) == 0.0


def test_rate_limiter_combines_requests_and_tokens_and_pauses():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=6000, burst_s=1.0, clock=clock)
    assert limiter.enabled
    res, wait = limiter.reserve(100)  # 10 req/s burst 10, 100 tok/s burst 100
    assert wait == 0
    limiter.settle(res, 20)  # 80 tokens come back
    _, wait = limiter.reserve(150)
    assert wait == pytest.approx(0.7)  # 80 tokens left - 150 = -70 tokens at 100 tokens/s
    limiter.pause(5)
    _, wait = limiter.reserve(0)
    assert wait >= 5
    assert not RateLimiter().enabled


# -- budget -------------------------------------------------------------------------------------


def test_budget_reserves_worst_case_and_stops_for_good():
    budget = Budget(max_tokens=1000)
    first = budget.reserve(100, 300)
    second = budget.reserve(100, 300)
    with pytest.raises(BudgetExhausted) as info:
        budget.reserve(100, 300)  # 800 reserved + 400 > 1000
    assert "max_total_tokens=1000" in str(info.value)
    budget.settle(first, 90, 10)
    budget.release(second)
    with pytest.raises(BudgetExhausted):  # sticky: the run stops at a clean point
        budget.reserve(1, 1)
    assert budget.spent_tokens == 100


def test_budget_cost_cap_stops():
    budget = Budget(max_cost=1.0, prices=Prices(1.0, 1.0))
    ok = budget.reserve(200, 200)  # worst case 0.4
    assert budget.settle(ok, 200, 100) == pytest.approx(0.3)
    budget.reserve(200, 200)
    with pytest.raises(BudgetExhausted, match="cost budget"):
        budget.reserve(200, 200)


def test_cached_prompt_tokens_are_billed_at_their_price_and_counted_whole():
    prices = Prices(prompt_per_1k=2.0, completion_per_1k=8.0, cached_prompt_per_1k=0.5)
    budget = Budget(max_tokens=10_000, max_cost=10.0, prices=prices)
    reservation = budget.reserve(1000, 100)
    assert reservation.cost == pytest.approx(2.8)  # the worst case assumes no prompt cache
    cost = budget.settle(reservation, 1000, 100, cached_prompt_tokens=768)
    assert cost == pytest.approx((232 * 2.0 + 768 * 0.5 + 100 * 8.0) / 1000)
    assert budget.spent_cost == pytest.approx(cost) and budget.spent_tokens == 1100  # rate limits see every token
    # Without a price of their own, cached tokens cost what other prompt tokens cost.
    assert Prices(2.0, 8.0).cost(1000, 100, 768) == pytest.approx(Prices(2.0, 8.0).cost(1000, 100))


def test_cost_cap_without_prices_is_refused():
    with pytest.raises(ValueError, match="prices"):
        Budget(max_cost=1.0)


# -- keys -----------------------------------------------------------------------------------------


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-from-env-123456")
    key = keys.resolve_api_key("MY_TEACHER_KEY", "https://api.example.com/v1")
    assert key.get_secret_value() == "sk-from-env-123456"
    assert "sk-from" not in repr(key) and "sk-from" not in str(key)


def test_key_from_secret_block_when_env_is_missing(monkeypatch):
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    looked_up = []
    monkeypatch.setattr(keys, "_from_secret_block", lambda name: looked_up.append(name) or "sk-block-key")
    assert keys.resolve_api_key("MY_TEACHER_KEY", None).get_secret_value() == "sk-block-key"
    assert looked_up == ["my-teacher-key"]


def test_missing_key_says_where_it_looked(monkeypatch):
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    monkeypatch.setattr(keys, "_from_secret_block", lambda name: None)
    with pytest.raises(TeacherError, match="MY_TEACHER_KEY.*my-teacher-key"):
        keys.resolve_api_key("MY_TEACHER_KEY", "https://api.groq.com/openai/v1")


def test_local_endpoints_need_no_key(monkeypatch):
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    monkeypatch.setattr(keys, "_prefect_api_at_hand", lambda: False)
    monkeypatch.setattr(keys, "_from_secret_block", lambda name: pytest.fail("no Secret lookup for loopback"))
    assert keys.resolve_api_key("MY_TEACHER_KEY", "http://127.0.0.1:11434/v1").get_secret_value() == keys.NO_KEY
    assert keys.resolve_api_key("", "https://api.example.com").get_secret_value() == keys.NO_KEY


def test_local_endpoint_still_uses_a_secret_block_when_prefect_is_at_hand(monkeypatch):
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    monkeypatch.setattr(keys, "_prefect_api_at_hand", lambda: True)
    monkeypatch.setattr(keys, "_from_secret_block", lambda name: "sk-local-block")
    assert keys.resolve_api_key("MY_TEACHER_KEY", "http://localhost:8000/v1").get_secret_value() == "sk-local-block"


def test_scrub_removes_the_key_and_masked_echoes():
    secret = SecretStr("sk-canary-0123456789abcdef")
    text = "bad key sk-canary-0123456789abcdef; Incorrect API key provided: sk-can***cdef."
    clean = keys.scrub(text, secret)
    assert "canary" not in clean and "cdef" not in clean


def test_provider_repr_has_no_key():
    chat = OpenAIChat("gpt-x", "https://api.example.com/v1/", SecretStr("sk-canary-abcdef123456"))
    assert "canary" not in repr(chat) and "canary" not in str(chat)
    assert chat.cache_scope == "openai:https://api.example.com/v1"


def test_a_local_model_is_cached_under_its_content_not_its_name(tmp_path):
    from tasks.teacher.llama_cpp import LlamaCppChat

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "teacher.gguf").write_bytes(b"GGUF weights v1")
    (tmp_path / "b" / "teacher.gguf").write_bytes(b"GGUF weights v2")  # same name, re-quantized
    (tmp_path / "copy.gguf").write_bytes(b"GGUF weights v1")  # same content, another path
    v1, v2, copy = (LlamaCppChat(p, model="teacher") for p in
                    (tmp_path / "a" / "teacher.gguf", tmp_path / "b" / "teacher.gguf", tmp_path / "copy.gguf"))
    assert v1.cache_scope != v2.cache_scope
    assert v1.cache_scope == copy.cache_scope and v1.cache_scope.startswith("llama_cpp:")


def test_a_local_models_cached_answers_are_scoped_to_how_json_is_decoded(tmp_path, monkeypatch):
    from tasks.teacher import llama_cpp

    (tmp_path / "teacher.gguf").write_bytes(b"GGUF weights v1")
    chat = llama_cpp.LlamaCppChat(tmp_path / "teacher.gguf")
    before = chat.cache_scope
    monkeypatch.setattr(llama_cpp, "DECODING", "json-grammar-next")
    assert chat.cache_scope != before and chat.cache_scope.endswith(":json-grammar-next")


# -- request bodies --------------------------------------------------------------------------------


class Answer(BaseModel):
    answer: str


@pytest.mark.parametrize(("details", "cached"), [
    ({"prompt_tokens_details": {"cached_tokens": 1152}}, 1152),  # OpenAI, vLLM, llama.cpp's server
    ({"prompt_tokens_details": {"cached_tokens": None}}, 0),
    ({"prompt_tokens_details": None}, 0),
    ({}, 0),  # an endpoint without a prompt cache
    ({"prompt_tokens_details": {"cached_tokens": 9999}}, 1500),  # never more than the prompt
])
def test_a_response_reports_the_prompt_tokens_its_cache_served(details, cached):
    from openai.types.chat import ChatCompletion

    response = ChatCompletion.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1500, "completion_tokens": 3, "total_tokens": 1503, **details},
    })
    completion = completion_from_response(response, latency_s=0.1)
    assert (completion.prompt_tokens, completion.cached_prompt_tokens) == (1500, cached)


def test_request_body_asks_for_the_schema_per_mode():
    schema = Answer.model_json_schema()
    request = CompletionRequest(messages=messages(("user", "q")), json_schema=schema, stop=("\n\n",), max_tokens=9)
    body = request_body(request, "m", "json_schema")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert body["response_format"]["json_schema"]["name"] == "Answer"
    assert body["stop"] == ["\n\n"] and body["max_tokens"] == 9 and body["messages"] == [{"role": "user", "content": "q"}]
    json_mode = request_body(request, "m", "json_object")
    assert json_mode["response_format"] == {"type": "json_object"}
    assert '"answer"' in json_mode["messages"][-1]["content"]
    prompt_mode = request_body(request, "m", "prompt")
    assert "response_format" not in prompt_mode and "JSON schema" in prompt_mode["messages"][-1]["content"]
    plain = request_body(CompletionRequest(messages=messages(("user", "q"))), "m")
    assert "response_format" not in plain and "stop" not in plain


def test_cache_key_depends_on_scope_model_prompt_and_parameters():
    base = CompletionRequest(messages=messages(("user", "q")))
    keys_ = {
        base.key("openai:https://a/v1", "m"),
        base.key("openai:https://b/v1", "m"),
        base.key("openai:https://a/v1", "n"),
        base.model_copy(update={"temperature": 0.5}).key("openai:https://a/v1", "m"),
        CompletionRequest(messages=messages(("user", "q2"))).key("openai:https://a/v1", "m"),
    }
    assert len(keys_) == 5
    assert base.key("s", "m") == CompletionRequest(messages=messages(("user", "q"))).key("s", "m")


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a": 1}', '{"a": 1}'),
    ('```json\n{"a": 1}\n```', '{"a": 1}'),
    ('```\n{"a": 1}\n```\n', '{"a": 1}'),
    ('  {"a": 1}  ', '{"a": 1}'),
])
def test_extract_json(text, expected):
    assert extract_json(text) == expected


def test_stats_add_sums_counts_and_keeps_stops():
    merged = TeacherStats(requests=3, cost=0.5, prompt_tokens=10)
    merged.add(TeacherStats(requests=2, cost=0.25, completion_tokens=5, budget_stopped=True,
                            stop_reason="token budget"))
    assert merged.requests == 5 and merged.cost == 0.75 and merged.total_tokens == 15
    assert merged.budget_stopped and merged.stop_reason == "token budget"
    assert "total_tokens" in merged.model_dump()


@given(n=st.integers(0, 50), shards=st.integers(1, 8))
def test_split_keeps_every_item_in_order(n, shards):
    parts = split(list(range(n)), shards)
    assert [x for part in parts for x in part] == list(range(n))
    if n:
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and len(parts) == min(shards, n)


def test_a_stage_that_used_a_local_teacher_is_redone_when_the_model_file_changes(tmp_path):
    import os
    from types import SimpleNamespace

    from tasks.core.caching import stage_cache_key
    from tasks.core.recipe import TeacherConfig

    gguf = tmp_path / "teacher.gguf"
    gguf.write_bytes(b"GGUF weights v1")
    context = SimpleNamespace(task=SimpleNamespace(fn=test_a_local_model_is_cached_under_its_content_not_its_name))
    local = {"teacher_config": TeacherConfig(provider="llama_cpp", model=str(gguf)), "n": 1}
    before = stage_cache_key(context, local)
    assert stage_cache_key(context, local) == before
    gguf.write_bytes(b"GGUF weights v2")  # same path, same config: another model
    os.utime(gguf, ns=(1, 1))
    assert stage_cache_key(context, local) != before
    remote = {"teacher_config": TeacherConfig(provider="openai", model="gpt-x"), "n": 1}
    assert stage_cache_key(context, remote) == stage_cache_key(context, remote)


def test_how_the_teacher_is_paced_or_sharded_does_not_redo_a_stage():
    from types import SimpleNamespace

    from tasks.core.caching import stage_cache_key
    from tasks.core.recipe import TeacherConfig

    context = SimpleNamespace(task=SimpleNamespace(fn=test_how_the_teacher_is_paced_or_sharded_does_not_redo_a_stage))

    def key(**fields: object) -> str:
        config = TeacherConfig.model_validate({"provider": "openai", "model": "gpt-x", **fields})
        return stage_cache_key(context, {"teacher_config": config})

    plain = key()
    assert key(concurrency=16, requests_per_minute=500, tokens_per_minute=90_000, request_timeout_s=30,
               max_retries=2, retry_backoff_s=2, max_wait_s=5, limiter_burst_s=3, shards=4,
               dask_address="tcp://10.0.0.5:8786", api_key_env="TEAM_KEY") == plain
    for changed in ({"temperature": 0.7}, {"max_tokens": 512}, {"seed": 1}, {"model": "gpt-y"},
                    {"max_total_tokens": 1000}, {"structured_mode": "prompt"}):
        assert key(**changed) != plain, changed
