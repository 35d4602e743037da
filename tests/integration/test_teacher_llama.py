"""The embedded default teacher: the real SmolLM2-135M GGUF in-process with llama.cpp (small outputs)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel, Field

from tasks.core.models import ModelNotFound, resolve_gguf
from tasks.core.recipe import TeacherConfig
from tasks.core.settings import get_settings
from tasks.teacher import teacher as teacher_module
from tasks.teacher.base import CompletionRequest, messages
from tasks.teacher.llama_cpp import PREFIX_CHUNK, LlamaCppChat, load_gguf
from tasks.teacher.teacher import Teacher

pytestmark = pytest.mark.integration


class Capital(BaseModel):
    country: str
    capital: str


@pytest.fixture(scope="module")
def gguf():
    try:
        return resolve_gguf("smollm2-135m")
    except ModelNotFound as exc:  # pragma: no cover - the package is a project dependency
        pytest.skip(str(exc))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "state"))
    get_settings.cache_clear()
    teacher_module.clear_teachers()
    yield
    teacher_module.clear_teachers()
    get_settings.cache_clear()


def test_structured_output_from_the_real_model_is_cached(gguf, home):
    config = TeacherConfig(provider="llama_cpp", model="smollm2-135m", n_ctx=512, max_tokens=40)
    teacher = teacher_module.get_teacher(config)
    assert isinstance(teacher.provider, LlamaCppChat) and teacher.provider.model_path == gguf
    ask = messages(("system", "Reply in JSON."), ("user", "What is the capital of France?"))
    value, reason = teacher.structured(ask, Capital, max_tokens=40, max_repairs=1)
    # The JSON-schema grammar makes the output parse; 40 tokens are enough for this object.
    assert reason is None and isinstance(value, Capital) and value.capital
    paid = teacher.stats.completions
    assert paid >= 1 and teacher.stats.prompt_tokens > 0 and teacher.stats.completion_tokens > 0
    again, _ = teacher.structured(ask, Capital, max_tokens=40, max_repairs=1)
    assert again == value and teacher.stats.completions == paid and teacher.stats.cache_hits >= 1


def test_concurrent_calls_share_one_model_safely(gguf):
    chat = LlamaCppChat(gguf, n_ctx=512)
    try:
        teacher = Teacher(chat, cache=None, concurrency=2)
        requests = [CompletionRequest(messages=messages(("user", q)), max_tokens=6, temperature=0.0)
                    for q in ("Name a colour.", "Name a fruit.")]
        sequential = [chat.complete(r).text for r in requests]
        with ThreadPoolExecutor(2) as pool:  # callers on two threads at once: they take turns on the context
            parallel = list(pool.map(lambda r: teacher.complete(r).text, requests))
        assert parallel == sequential and all(parallel)
        assert teacher.stats.completions == 2
        # Teacher.map sends one at a time (max_in_flight): a second would only wait for the context.
        threads = set()
        teacher.map(lambda r: threads.add(threading.get_ident()), requests, concurrency=2, progress=lambda d, t: None)
        assert len(threads) == 1
    finally:
        chat.close()


def test_log_probabilities_of_the_first_token_come_from_the_real_model(gguf):
    """What the pairwise judge reads: the letters' probabilities, whichever letter greedy decoding picks."""
    chat = LlamaCppChat(gguf, n_ctx=512)
    try:
        ask = messages(("system", "Reply with one letter: A or B."), ("user", "Which letter comes first?"))
        scored = chat.complete(CompletionRequest(messages=ask, max_tokens=1, top_logprobs=20))
        plain = chat.complete(CompletionRequest(messages=ask, max_tokens=1))
        assert len(scored.top_logprobs) == 1 and len(scored.top_logprobs[0]) == 20
        first = scored.top_logprobs[0]
        assert max(first, key=first.get) == scored.text == plain.text  # greedy takes the likeliest token
        assert {"A", "B"} <= set(first) and all(lp <= 0 for lp in first.values())
        assert plain.top_logprobs == ()
        # The same numbers llama-cpp-python's own log-probabilities give, from an instance that keeps every
        # position's logits (what LlamaCppChat no longer needs), at each of several positions.
        longer = chat.complete(CompletionRequest(messages=ask, max_tokens=4, top_logprobs=5))
        reference = load_gguf(gguf, n_ctx=512, logits_all=True)
        try:
            theirs = reference.create_chat_completion(
                messages=[m.model_dump() for m in ask], max_tokens=4, temperature=0.0, seed=0, logprobs=True,
                top_logprobs=5)["choices"][0]
        finally:
            reference.close()
        assert longer.text == theirs["message"]["content"]
        expected = [{alt["token"]: alt["logprob"] for alt in position["top_logprobs"]}
                    for position in theirs["logprobs"]["content"]]
        assert len(longer.top_logprobs) == len(expected) == longer.completion_tokens
        for ours, reference_position in zip(longer.top_logprobs, expected):
            assert ours.keys() == reference_position.keys()
            assert all(ours[token] == pytest.approx(lp, abs=1e-4) for token, lp in reference_position.items())
    finally:
        chat.close()


class Rated(BaseModel):
    score: float = Field(description="Score from 0 to 1.", ge=0, le=1)
    rating: int = Field(description="Rating from 0 to 10.", ge=0, le=10)


def test_a_bounded_number_stays_in_range_when_the_prompt_pulls_it_out(gguf):
    """A prompt asking for a score out of 100 cannot push the grammar-constrained model off the schema's
    scale: llama.cpp's converter ignores minimum/maximum, grammar_safe lists the values."""
    chat = LlamaCppChat(gguf, n_ctx=512)
    try:
        for scale in ("100", "1000"):
            request = CompletionRequest(
                messages=messages(("system", "Reply in JSON."),
                                  ("user", f"Give this essay a score out of {scale} and a rating out of {scale}.")),
                max_tokens=24, temperature=0.0, json_schema=Rated.model_json_schema())
            text = chat.complete(request).text
            value = Rated.model_validate_json(text)
            assert 0 <= value.score <= 1 and 0 <= value.rating <= 10, text
    finally:
        chat.close()


class Poem(BaseModel):
    poem: str = Field(max_length=40)


def test_json_strings_never_hold_raw_control_characters(gguf):
    """With newlines pushed hard, llama-cpp-python's own schema grammar lets a raw newline into a JSON
    string (invalid JSON); the grammar the teacher and validation decode with does not."""
    import json

    from llama_cpp import Llama

    from tasks.teacher.llama_cpp import json_grammar

    llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False, seed=0)
    try:
        newline = llm.tokenize(b"\n", add_bos=False, special=False)[0]
        ask = {"messages": [{"role": "user", "content": "Write a two-line poem as JSON."}], "max_tokens": 40,
               "temperature": 0.0, "logit_bias": {newline: 30.0}}
        schema = Poem.model_json_schema()
        loose = llm.create_chat_completion(response_format={"type": "json_object", "schema": schema}, **ask)
        strict = llm.create_chat_completion(grammar=json_grammar(schema), **ask)
    finally:
        llm.close()
    loose_text = loose["choices"][0]["message"]["content"]
    with pytest.raises(ValueError, match="control character"):  # the failure the teacher used to reject
        json.loads(loose_text)
    assert Poem.model_validate_json(strict["choices"][0]["message"]["content"]).poem


def test_the_longest_enforced_string_limit_decodes_in_a_worker_thread(gguf):
    """llama.cpp's grammar parser recurses once per character of a maxLength (~1200 killed the process):
    the improvement's limit, GRAMMAR_MAX_REPEAT, must parse and decode where teacher calls run, in a
    worker thread."""

    from llama_cpp import Llama

    from tasks.pairs.build import Improved
    from tasks.teacher.llama_cpp import GRAMMAR_MAX_REPEAT, grammar_safe, json_grammar

    schema = Improved.model_json_schema()
    assert grammar_safe(schema)["properties"]["response"]["maxLength"] == GRAMMAR_MAX_REPEAT  # enforced, not dropped
    llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False, seed=0)
    try:
        with ThreadPoolExecutor(1) as pool:
            out = pool.submit(llm.create_chat_completion, grammar=json_grammar(schema), max_tokens=12, temperature=0.0,
                              messages=[{"role": "user", "content": "Improve: the mean is the middle value."}]).result()
    finally:
        llm.close()
    assert out["choices"][0]["message"]["content"].startswith("{")


def test_models_generate_on_every_physical_core_unless_told_otherwise(gguf, home, monkeypatch):
    import psutil

    from tasks.teacher.llama_cpp import load_gguf

    monkeypatch.delenv("DISTILLERY_LLAMA_THREADS", raising=False)  # tests/conftest.py sets it under -n
    get_settings.cache_clear()
    physical = min(psutil.cpu_count(logical=False) or 1, len(os.sched_getaffinity(0)))
    llm = load_gguf(gguf, n_ctx=256)
    try:
        # llama-cpp-python alone would take half the logical CPUs: one thread on a 2-core machine.
        assert llm.context_params.n_threads == physical == get_settings().generation_threads
    finally:
        llm.close()
    monkeypatch.setenv("DISTILLERY_LLAMA_THREADS", "1")
    get_settings.cache_clear()
    chat = LlamaCppChat(gguf, n_ctx=256)
    try:
        chat.complete(CompletionRequest(messages=messages(("user", "Hi")), max_tokens=2, temperature=0.0))
        assert chat._llm.context_params.n_threads == 1
    finally:
        chat.close()


def test_prompts_are_cut_into_chunks_at_message_starts_and_every_64_tokens(gguf):
    """Where CanonicalPrefix cuts a chat prompt: what makes a reading independent of the request before it
    (tests/integration/test_judge_local.py checks the readings themselves)."""
    chat = LlamaCppChat(gguf, n_ctx=1024)
    try:
        long_question = " ".join(["Why does the validation loss rise while the training loss falls?"] * 20)
        reply = chat.complete(CompletionRequest(
            messages=messages(("system", "Answer briefly."), ("user", long_question)), max_tokens=1))
        llm, prefix = chat._llm, chat._prefix
        prompt = [int(t) for t in llm.input_ids[:reply.prompt_tokens]]
        starts = [i for i, token in enumerate(prompt) if llm.detokenize([token], special=True) == b"<|im_start|>"]
        ends = prefix.chunk_ends(prompt)
        assert len(starts) == 3 and set(starts[1:]) <= set(ends)  # system, user, the assistant's header
        assert ends[-1] == len(prompt) and reply.prompt_tokens > 3 * PREFIX_CHUNK
        assert max(b - a for a, b in zip([0, *ends], ends)) == PREFIX_CHUNK  # the question is cut by length
        assert prefix.whole_to == ends[-2]  # the assistant's header is not whole: a longer prompt carries it on
    finally:
        chat.close()


def test_the_prompt_tokens_a_request_kept_are_reported_and_counted(gguf):
    """A request reports the prompt tokens it did not evaluate again (the whole chunks it shares with the one
    before), as an API reports its prompt cache's; the teacher's stats add them up."""
    teacher = Teacher(LlamaCppChat(gguf, n_ctx=1024))
    try:
        system = " ".join(["You review machine learning papers for a workshop; be specific and fair."] * 12)

        def ask(question: str) -> CompletionRequest:
            return CompletionRequest(messages=messages(("system", system), ("user", question)), max_tokens=1)

        first = teacher.complete(ask("Is the ablation convincing?"))
        second = teacher.complete(ask("Are the baselines tuned as well as the method?"))
        prefix = teacher.provider._prefix
        assert first.cached_prompt_tokens == 0  # nothing was in the context
        # The system turn (whole 64-token chunks, then the chunk the user's message start ends) is kept.
        assert PREFIX_CHUNK < second.cached_prompt_tokens == prefix.last_kept < second.prompt_tokens
        assert second.cached_prompt_tokens in prefix.chunk_ends(
            [int(t) for t in teacher.provider._llm.input_ids[:second.prompt_tokens]])
        assert teacher.stats.cached_prompt_tokens == second.cached_prompt_tokens == prefix.kept
        assert f"{second.cached_prompt_tokens} of {teacher.stats.prompt_tokens} prompt tokens reused" \
            in teacher.stats.summary()
    finally:
        teacher.provider.close()
