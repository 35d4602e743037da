"""The provider interface every teacher implements, the request/response records and the errors.

A provider makes exactly one attempt per call. Everything around it (the cache, the client-side rate
limiter, retries, the budget, accounting) lives in :class:`tasks.teacher.teacher.Teacher`, so every
provider gets the same policy and the counts in a stage report mean the same thing for all of them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pydantic import Field

from tasks.core.hashing import canonical_json, sha256_json
from tasks.core.refs import Frozen


class ChatMessage(Frozen):
    role: str
    content: str


class CompletionRequest(Frozen):
    """One chat completion. Its cache key is the hash of this record plus provider scope and model."""

    messages: tuple[ChatMessage, ...]
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    json_schema: dict[str, Any] | None = Field(default=None, description="Ask for JSON following this schema.")
    stop: tuple[str, ...] = ()
    top_logprobs: int = Field(default=0, ge=0, le=20,
                              description="Also return the most likely tokens, this many, at each generated position.")

    def key(self, provider: str, model: str) -> str:
        return sha256_json({"provider": provider, "model": model, "request": self.model_dump(mode="json")})

    def estimated_prompt_tokens(self) -> int:
        """A deliberately generous guess (3 characters a token) used before the provider answers.

        The rate limiter and the budget reserve this plus ``max_tokens`` before a request is sent and
        settle with the provider's real usage afterwards.
        """
        chars = sum(len(m.content) for m in self.messages)
        schema_chars = len(canonical_json(self.json_schema)) if self.json_schema else 0
        return chars // 3 + 8 * len(self.messages) + schema_chars // 3 + 8


class Completion(Frozen):
    text: str
    prompt_tokens: int = 0
    cached_prompt_tokens: int = Field(
        default=0, description="Of ``prompt_tokens``, those the provider did not compute again: an API's prompt cache "
                               "(``usage.prompt_tokens_details.cached_tokens``), a local model's kept prefix.")
    completion_tokens: int = 0
    finish_reason: str | None = None
    latency_s: float = 0.0
    cached: bool = False
    top_logprobs: tuple[dict[str, float], ...] = Field(
        default=(), description="For each generated token, the most likely tokens and their log-probabilities "
                                "(when the request asked for them and the provider gives them).")


def top_logprobs_of(content: Any) -> tuple[dict[str, float], ...]:
    """The alternatives at each position of an OpenAI-style ``logprobs.content`` list (objects or dicts)."""

    def field(item: Any, name: str) -> Any:
        return item.get(name) if isinstance(item, dict) else getattr(item, name, None)

    return tuple({field(alt, "token"): float(field(alt, "logprob")) for alt in field(position, "top_logprobs") or ()}
                 for position in content or ())


class TeacherError(RuntimeError):
    """A request that failed for good, with a message safe to log (it never carries a key)."""


class QuotaExhausted(TeacherError):
    """The provider says the account is out of quota (429 ``insufficient_quota``): retrying cannot help."""


class BudgetExhausted(TeacherError):
    """This run's token or cost budget is spent; generation stops cleanly."""


class RateLimitDeferred(TeacherError):
    """The provider asked us to wait longer than ``max_wait_s`` (Retry-After): the stage should defer.

    Attributes:
        wait_s: how long the provider asked to wait, in seconds.
    """

    def __init__(self, message: str, wait_s: float):
        super().__init__(message)
        self.wait_s = wait_s

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries from a Dask shard
        return type(self), (str(self), self.wait_s)


class RetriesExhausted(TeacherError):
    """A request still failed after ``max_retries`` retries (5xx bursts, timeouts, repeated 429s)."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.attempts)


FailureKind = Literal["rate_limit", "server", "timeout", "connection", "bad_response"]


class TransientError(TeacherError):
    """One attempt failed in a way that may pass on a later attempt; the teacher retries it.

    Raised by providers for 429 (not quota), 5xx, timeouts, dropped connections and malformed
    response envelopes. ``retry_after_s`` is the provider's Retry-After, when it sent one.
    """

    def __init__(self, message: str, *, kind: FailureKind, status: int | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s


# Set by the teacher around a provider call: a provider with ``gates_sends = True`` awaits it right
# before its request leaves (after client setup and connection pooling), so the rate limiter paces the
# moments requests really go out, not the moments they were ready to.
SEND_GATE: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "distillery_send_gate", default=None)


class ChatProvider(Protocol):
    """What a teacher backend must do: one chat completion attempt.

    Providers may also offer ``async def acomplete(request)`` (used by the teacher when present),
    ``cache_scope`` (a string that separates caches of same-named models at different endpoints) and
    ``close()``, ``max_in_flight`` (requests it serves at once: :meth:`Teacher.map` runs no more), and set
    ``gates_sends = True`` if they await :data:`SEND_GATE` just before sending.
    They raise :class:`TransientError` for failures worth retrying, :class:`QuotaExhausted`
    for quota errors and :class:`TeacherError` for anything else that is final.
    """

    provider: str
    model: str

    def complete(self, request: CompletionRequest) -> Completion: ...


def messages(*pairs: tuple[str, str]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role=role, content=content) for role, content in pairs)
