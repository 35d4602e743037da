"""Any OpenAI-compatible chat endpoint through the official ``openai`` client.

One base URL, model and key cover OpenAI, Groq, OpenRouter, the OpenAI-compatible endpoints of Gemini
and Anthropic, vLLM, Ollama and llama.cpp's server. The client runs with ``max_retries=0``: each call
is one attempt, and :class:`~tasks.teacher.teacher.Teacher` owns retries, so it can count and bound
them. Errors are translated into the teacher's own (transient, quota, final) with the key scrubbed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Literal

from pydantic import SecretStr

from tasks.core.retry_after import parse_retry_after
from tasks.teacher.base import (
    SEND_GATE,
    Completion,
    CompletionRequest,
    QuotaExhausted,
    TeacherError,
    TransientError,
    top_logprobs_of,
)
from tasks.teacher.keys import resolve_api_key, scrub

log = logging.getLogger("distillery.teacher")
StructuredMode = Literal["json_schema", "json_object", "prompt"]
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def _schema_name(schema: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "output"))[:64] or "output"


def _schema_instruction(schema: dict[str, Any]) -> str:
    import json

    return ("Reply with only a JSON object, no prose and no code fences, that follows this JSON schema:\n"
            + json.dumps(schema, separators=(",", ":")))


TokenParam = Literal["max_tokens", "max_completion_tokens"]


def request_body(request: CompletionRequest, model: str, mode: StructuredMode = "json_schema",
                 token_param: TokenParam = "max_tokens", logprobs: bool = True) -> dict[str, Any]:
    """The ``chat.completions.create`` arguments for a request (pure; what the cache key stands for).

    ``token_param`` names the output-token limit: ``max_tokens`` is what every compatible server reads;
    OpenAI's reasoning models (o-series, gpt-5) refuse it and want ``max_completion_tokens``.
    ``logprobs=False`` leaves out the request's ``top_logprobs`` (an endpoint that refuses them).
    """
    msgs = [m.model_dump() for m in request.messages]
    body: dict[str, Any] = {
        "model": model,
        "temperature": request.temperature,
        token_param: request.max_tokens,
        "seed": request.seed,
    }
    if request.stop:
        body["stop"] = list(request.stop)
    if request.top_logprobs and logprobs:
        body.update(logprobs=True, top_logprobs=request.top_logprobs)
    schema = request.json_schema
    if schema is not None:
        if mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": schema, "strict": False},
            }
        else:
            # Endpoints without JSON-schema support get the schema in the prompt (and JSON mode if they have it).
            msgs = [*msgs, {"role": "system", "content": _schema_instruction(schema)}]
            if mode == "json_object":
                body["response_format"] = {"type": "json_object"}
    body["messages"] = msgs
    return body


def completion_from_response(response: Any, latency_s: float) -> Completion:
    """A :class:`Completion` from a ``ChatCompletion``; an envelope without choices is transient."""
    choices = getattr(response, "choices", None) or []
    if not choices or getattr(choices[0], "message", None) is None:
        raise TransientError("the provider returned a response without choices", kind="bad_response")
    choice = choices[0]
    text = choice.message.content or ""
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None) if usage is not None else None
    completion = getattr(usage, "completion_tokens", None) if usage is not None else None
    # OpenAI, vLLM and llama.cpp's server report the prompt tokens their prompt cache served here.
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    return Completion(
        text=text,
        # Without usage the budget must still move: fall back to a rough estimate.
        prompt_tokens=int(prompt) if prompt is not None else 0,
        cached_prompt_tokens=min(int(cached or 0), int(prompt or 0)),
        completion_tokens=int(completion) if completion is not None else max(1, len(text) // 4),
        finish_reason=getattr(choice, "finish_reason", None),
        latency_s=latency_s,
        top_logprobs=top_logprobs_of(getattr(getattr(choice, "logprobs", None), "content", None)),
    )


async def _await_send_gate(_request: Any) -> None:
    gate = SEND_GATE.get()
    if gate is not None:
        await gate()


class OpenAIChat:
    """A chat model behind an OpenAI-compatible HTTP API.

    Args:
        model: the model name the endpoint knows.
        base_url: the endpoint (default: OpenAI's).
        api_key: the key, already resolved (see :func:`tasks.teacher.keys.resolve_api_key`).
        timeout_s: per-request timeout; a hung request fails after it and is retried.
        structured_mode: how a JSON schema is asked for: ``json_schema`` (response_format with the schema:
            OpenAI, Gemini, Groq, OpenRouter, vLLM, Ollama, llama.cpp server), ``json_object`` (JSON mode,
            schema in the prompt) or ``prompt`` (schema in the prompt only: Anthropic's endpoint).
    """

    provider = "openai"
    gates_sends = True

    def __init__(self, model: str, base_url: str | None = None, api_key: SecretStr | None = None, *,
                 timeout_s: float = 120.0, structured_mode: StructuredMode = "json_schema",
                 key_source: str = "OPENAI_API_KEY"):
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else SecretStr("")
        self.timeout_s = timeout_s
        self.structured_mode = structured_mode
        self.key_source = key_source
        # Switched once, for good, when the endpoint asks for max_completion_tokens or refuses
        # log-probabilities (_adapted).
        self.token_param: TokenParam = "max_tokens"
        self.logprobs = True
        self._sync_client: Any = None
        self._async_clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        # Build the client for the teacher's event loop now: a first request that paid for it would
        # leave late, and the requests the rate limiter paced behind it would then go out together.
        from tasks.teacher.runner import teacher_loop

        loop = teacher_loop()
        self._async_clients[id(loop)] = (loop, self._new_async_client())

    @classmethod
    def from_config(cls, config: Any) -> OpenAIChat:
        """Build from a ``TeacherConfig``; the key is resolved here, from the environment or a Secret block."""
        key_env = getattr(config, "api_key_env", "OPENAI_API_KEY")
        return cls(
            model=config.model,
            base_url=getattr(config, "base_url", None),
            api_key=resolve_api_key(key_env, getattr(config, "base_url", None)),
            timeout_s=float(getattr(config, "request_timeout_s", 120.0)),
            structured_mode=getattr(config, "structured_mode", "json_schema"),
            key_source=key_env,
        )

    @property
    def cache_scope(self) -> str:
        """Same-named models at different endpoints are different models: the cache keeps them apart."""
        return f"openai:{self.base_url}"

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r}, key_source={self.key_source!r})"

    __str__ = __repr__

    def _client_kwargs(self) -> dict[str, Any]:
        return {"api_key": self._api_key.get_secret_value() or "missing", "base_url": self.base_url,
                "max_retries": 0, "timeout": self.timeout_s}

    def _sync(self) -> Any:
        if self._sync_client is None:
            from openai import OpenAI

            self._sync_client = OpenAI(**self._client_kwargs())
        return self._sync_client

    def _new_async_client(self) -> Any:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        http = DefaultAsyncHttpxClient(timeout=self.timeout_s, event_hooks={"request": [_await_send_gate]})
        client = AsyncOpenAI(**self._client_kwargs(), http_client=http)
        client.chat.completions  # noqa: B018 - resolves the lazy resource once, not on the first request
        return client

    def _async(self) -> Any:
        # An async HTTP client belongs to the event loop it first ran on: keep one per loop.
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = self._async_clients[id(loop)] = (loop, self._new_async_client())
        return entry[1]

    def complete(self, request: CompletionRequest) -> Completion:
        while True:
            sent = self.token_param, self.logprobs
            start = time.perf_counter()
            try:
                response = self._sync().chat.completions.create(
                    **request_body(request, self.model, self.structured_mode, *sent))
            except Exception as exc:  # noqa: BLE001 - every client error is translated
                if self._adapted(exc, *sent, asked_logprobs=request.top_logprobs > 0):
                    continue
                raise self._translate(exc) from None
            return completion_from_response(response, time.perf_counter() - start)

    async def acomplete(self, request: CompletionRequest) -> Completion:
        while True:
            sent = self.token_param, self.logprobs
            start = time.perf_counter()
            try:
                response = await self._async().chat.completions.create(
                    **request_body(request, self.model, self.structured_mode, *sent))
            except Exception as exc:  # noqa: BLE001 - every client error is translated
                if self._adapted(exc, *sent, asked_logprobs=request.top_logprobs > 0):
                    continue
                raise self._translate(exc) from None
            return completion_from_response(response, time.perf_counter() - start)

    def _adapted(self, exc: Exception, token_param: TokenParam, logprobs: bool, asked_logprobs: bool) -> bool:
        """True when the endpoint refused a parameter it has an answer for; the next attempt adapts.

        OpenAI's reasoning models answer HTTP 400 ``unsupported_parameter`` on ``max_tokens`` (the limit
        then goes as ``max_completion_tokens``) and on ``logprobs`` (then left out: the completion has
        no log-probabilities, and a judge reading them falls back to its JSON verdict). Either holds for
        this and every later request. The cache key does not change: it is the same request, named
        differently on the wire.
        """
        import openai

        if not isinstance(exc, openai.BadRequestError):
            return False
        message = str(getattr(exc, "message", "") or exc)
        if token_param == "max_tokens" and "max_completion_tokens" in message:
            if self.token_param == "max_tokens":
                log.info("%s (%s) wants max_completion_tokens instead of max_tokens; sending that from now on",
                         self.base_url, self.model)
            self.token_param = "max_completion_tokens"
            return True
        if logprobs and asked_logprobs and "logprobs" in message:
            if self.logprobs:
                log.info("%s (%s) refuses logprobs; asking without them from now on", self.base_url, self.model)
            self.logprobs = False
            return True
        return False

    def _translate(self, exc: Exception) -> Exception:
        """The teacher's error for an ``openai`` client error; messages are scrubbed of the key."""
        import openai

        where = f"{self.base_url} ({self.model})"
        if isinstance(exc, openai.APITimeoutError):
            return TransientError(f"request to {where} timed out after {self.timeout_s:.0f} s", kind="timeout")
        if isinstance(exc, openai.APIConnectionError):
            return TransientError(f"connection to {where} failed: {type(exc.__cause__ or exc).__name__}",
                                  kind="connection")
        if isinstance(exc, openai.APIResponseValidationError):
            return TransientError(f"{where} returned a malformed response", kind="bad_response",
                                  status=exc.status_code)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            code = str(getattr(exc, "code", None) or getattr(exc, "type", None) or "")
            retry_after = parse_retry_after(exc.response.headers)
            if status == 429 and "insufficient_quota" in code:
                return QuotaExhausted(
                    f"{where} says the account is out of quota (HTTP 429 insufficient_quota): add credit or "
                    f"raise the quota, then run again; completed requests are cached and will not be paid twice"
                )
            if status == 429:
                return TransientError(f"rate limited by {where} (HTTP 429)", kind="rate_limit", status=status,
                                      retry_after_s=retry_after)
            if status >= 500 or status in (408, 409):
                return TransientError(f"{where} failed with HTTP {status}", kind="server", status=status,
                                      retry_after_s=retry_after)
            if status in (401, 403):
                return TeacherError(
                    f"{where} refused the key (HTTP {status}): check ${self.key_source} "
                    f"or the Prefect Secret block that holds it"
                )
            message = scrub(str(getattr(exc, "message", "") or exc), self._api_key)[:300]
            return TeacherError(f"{where} rejected the request (HTTP {status}): {message}")
        if isinstance(exc, ValueError):  # a 200 whose body is not JSON
            return TransientError(f"{where} returned a body that is not JSON", kind="bad_response")
        return TeacherError(f"request to {where} failed: {type(exc).__name__}: "
                            f"{scrub(str(exc), self._api_key)[:300]}")

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None
        from tasks.teacher.runner import in_teacher_loop

        clients, self._async_clients = list(self._async_clients.values()), {}
        for loop, client in clients:
            if loop.is_running() and not loop.is_closed() and not in_teacher_loop():
                try:
                    asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=5)
                except Exception as exc:  # noqa: BLE001 - closing is best effort
                    log.debug("closing the HTTP client failed: %s", type(exc).__name__)
