"""The teacher facade: cache, limits, retries, budget and accounting around one chat provider.

Every request takes the same path (:meth:`Teacher.acomplete`):

1. the durable cache: a hit (or an identical request already in flight) costs nothing;
2. the per-run budget reserves the request's worst case, or raises :class:`BudgetExhausted`;
3. the client-side limiter (requests and tokens per minute) says when it may go;
4. at most ``concurrency`` requests are in flight; each attempt is one provider call;
5. transient failures are retried with jittered backoff that obeys Retry-After, at most
   ``max_retries`` times; quota errors and long Retry-Afters are raised at once;
6. the response is booked (tokens, cost) and committed to the cache before it is returned.

The I/O is async on one event loop per process (:mod:`tasks.teacher.runner`); the synchronous
methods (:meth:`complete`, :meth:`structured`, :meth:`map`) run on it, so plain stage code and worker
threads can use the teacher without knowing.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError, computed_field

from tasks.core.recipe import TeacherConfig
from tasks.teacher.base import (
    SEND_GATE,
    BudgetExhausted,
    ChatMessage,
    ChatProvider,
    Completion,
    CompletionRequest,
    RetriesExhausted,
    TransientError,
)
from tasks.teacher.cache import RequestCache
from tasks.teacher.limits import Budget, LimitReservation, Prices, RateLimiter
from tasks.teacher.llama_cpp import grammar_safe
from tasks.teacher.progress import GenerationProgress
from tasks.teacher.retry import RetryPolicy
from tasks.teacher.runner import run_sync
from tasks.teacher.worst_case import worst_case_chars

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")

# The output budget of a structured request whose schema does not bound its length.
DEFAULT_MAX_TOKENS = 256

log = logging.getLogger("distillery.teacher")


class TeacherStats(BaseModel):
    """What the teacher did since the last :func:`fresh_stats`: the stage report's accounting.

    ``requests`` counts calls that reached the provider, retries included (what a rate limit sees);
    ``completions`` the successful ones (what is billed); ``cache_hits`` requests answered from the
    durable cache (or by an identical request in flight) at no cost; ``cached_prompt_tokens`` the part of
    ``prompt_tokens`` the provider did not compute again (an API's prompt cache, billed at
    ``price_per_1k_cached_prompt_tokens``; a local model's kept prefix).
    """

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    rejects: int = 0
    repairs: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    budget_stopped: bool = False
    completions: int = 0
    failures: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    cost: float = 0.0
    backoff_s: float = 0.0
    skipped: int = 0
    stop_reason: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: TeacherStats) -> None:
        """Add another account (a shard's) to this one, in place."""
        for name, value in other.model_dump(exclude={"total_tokens"}).items():
            mine = getattr(self, name)
            if isinstance(value, bool):
                setattr(self, name, mine or value)
            elif isinstance(value, (int, float)):
                setattr(self, name, mine + value)
            elif value is not None and mine is None:
                setattr(self, name, value)

    def summary(self) -> str:
        text = (f"{self.completions} paid, {self.cache_hits} cached, {self.retries} retries, "
                f"{self.rejects} rejects, {self.total_tokens} tokens")
        if self.cached_prompt_tokens:
            text += f" ({self.cached_prompt_tokens} of {self.prompt_tokens} prompt tokens reused)"
        if self.cost:
            text += f", cost {self.cost:.4f}"
        return text


_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def extract_json(text: str) -> str:
    """The JSON in a reply: the text itself, or the inside of a ```json fence some models add."""
    match = _FENCE.match(text)
    return match.group(1) if match else text.strip()


def _short_validation_error(exc: Exception, completion: Completion) -> str:
    if completion.finish_reason == "length":
        return "output cut off at max_tokens"
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return f"not JSON: {first['msg']}"[:160]
        return f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"[:160]
    return f"not JSON: {str(exc)[:120]}"


def _current_run_id() -> str | None:
    """The Prefect flow run this code runs in, if any: the budget is per run."""
    if "prefect" not in sys.modules:
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return str(task_ctx.task_run.flow_run_id)
    return None


class Teacher:
    """A chat provider behind the durable cache, with limits, retries, a budget and counters.

    Args:
        provider: one attempt per call (see :class:`~tasks.teacher.base.ChatProvider`).
        cache: the durable request cache (``None``: no caching).
        max_total_tokens: per-run token cap (prompt + completion of paid requests).
        max_cost: per-run cost cap; needs ``prices``.
        prices: prices per 1,000 prompt and completion tokens; with them, cost is counted.
        requests_per_minute: client-side request rate limit.
        tokens_per_minute: client-side token rate limit (prompt estimate + ``max_tokens`` reserved).
        burst_s: seconds' worth of the rate limits that may go out at once.
        concurrency: requests in flight at once.
        retry: how often and how long to retry.
        rng: randomness for backoff jitter (seed it in tests).
    """

    def __init__(self, provider: ChatProvider, cache: RequestCache | None = None,
                 max_total_tokens: int | None = None, *, max_cost: float | None = None,
                 prices: Prices | None = None, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, burst_s: float = 1.0, concurrency: int = 4,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None):
        self.provider = provider
        self.cache = cache
        self.max_total_tokens = max_total_tokens
        self.max_cost = max_cost
        self.prices = prices or Prices()
        self.concurrency = max(1, concurrency)
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute, burst_s=burst_s)
        self.stats = TeacherStats()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._budgets: dict[str | None, Budget] = {}
        self._semaphores: dict[int, asyncio.Semaphore] = {}
        self._inflight: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Completion]]] = {}
        if max_cost is not None and not self.prices.known:
            raise ValueError("a cost cap (max_cost) needs prices per token (price_per_1k_*_tokens)")

    @classmethod
    def from_config(cls, config: TeacherConfig, provider: ChatProvider | None = None,
                    cache: RequestCache | None = None, share: float = 1.0) -> Teacher:
        """A teacher as a recipe's ``teacher`` section describes it.

        ``share`` scales the rate limits and the budget, for one of several shards that split a run.
        """

        def scaled(value: float | None) -> float | None:
            return None if value is None else value * share

        max_tokens = scaled(config.max_total_tokens)
        return cls(
            provider if provider is not None else build_provider(config),
            cache,
            max_total_tokens=None if max_tokens is None else max(1, int(max_tokens)),
            max_cost=scaled(getattr(config, "max_cost", None)),
            prices=Prices(getattr(config, "price_per_1k_prompt_tokens", None),
                          getattr(config, "price_per_1k_completion_tokens", None),
                          getattr(config, "price_per_1k_cached_prompt_tokens", None)),
            requests_per_minute=scaled(config.requests_per_minute),
            tokens_per_minute=scaled(config.tokens_per_minute),
            burst_s=float(getattr(config, "limiter_burst_s", 1.0)),
            concurrency=config.concurrency,
            retry=RetryPolicy(
                max_retries=int(getattr(config, "max_retries", 6)),
                backoff_base_s=float(getattr(config, "retry_backoff_s", 0.5)),
                max_wait_s=float(getattr(config, "max_wait_s", 60.0)),
            ),
        )

    @property
    def name(self) -> str:
        return f"{self.provider.provider}:{self.provider.model}"

    @property
    def cache_scope(self) -> str:
        return str(getattr(self.provider, "cache_scope", self.provider.provider))

    def __repr__(self) -> str:
        return f"Teacher({self.provider!r})"

    # -- accounting -------------------------------------------------------------------------------

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def absorb(self, stats: TeacherStats) -> None:
        """Book what other teachers did on this one's behalf (the shards of a fan-out)."""
        with self._lock:
            self.stats.add(stats)

    def budget(self) -> Budget:
        """This run's budget (a new Prefect flow run starts a new one)."""
        run_id = _current_run_id()
        with self._lock:
            budget = self._budgets.pop(run_id, None)
            if budget is None:
                budget = Budget(self.max_total_tokens, self.max_cost, self.prices)
            self._budgets[run_id] = budget  # most recent last; a long-lived worker keeps only recent runs
            while len(self._budgets) > 64:
                self._budgets.pop(next(iter(self._budgets)))
            return budget

    def reset_budget(self) -> None:
        with self._lock:
            self._budgets.clear()

    # -- one request ------------------------------------------------------------------------------

    def complete(self, request: CompletionRequest) -> Completion:
        """One completion, from the cache or the provider (see the module docstring)."""
        return run_sync(self.acomplete(request))

    async def acomplete(self, request: CompletionRequest) -> Completion:
        key = request.key(self.cache_scope, self.provider.model)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._count(cache_hits=1)
                return hit
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending[0] is loop:
            # The same request is already on its way: wait for it instead of paying twice.
            completion = await asyncio.shield(pending[1])
            self._count(cache_hits=1)
            return completion.model_copy(update={"cached": True})
        future: asyncio.Future[Completion] = loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[key] = (loop, future)
        try:
            completion = await self._paid(request, key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(completion)
            return completion
        finally:
            self._inflight.pop(key, None)

    async def _paid(self, request: CompletionRequest, key: str) -> Completion:
        budget = self.budget()
        try:
            reservation = budget.reserve(request.estimated_prompt_tokens(), request.max_tokens)
        except BudgetExhausted as exc:
            with self._lock:
                self.stats.budget_stopped = True
                self.stats.stop_reason = self.stats.stop_reason or str(exc)
            raise
        try:
            completion = await self._send(request)
        except BaseException:
            budget.release(reservation)
            raise
        cost = budget.settle(reservation, completion.prompt_tokens, completion.completion_tokens,
                             completion.cached_prompt_tokens)
        self._count(completions=1, prompt_tokens=completion.prompt_tokens,
                    cached_prompt_tokens=completion.cached_prompt_tokens,
                    completion_tokens=completion.completion_tokens, cost=cost)
        if self.cache is not None:
            self.cache.put(key, self.cache_scope, self.provider.model, completion)
        return completion

    def _semaphore(self) -> asyncio.Semaphore:
        loop_id = id(asyncio.get_running_loop())
        with self._lock:
            if loop_id not in self._semaphores:
                self._semaphores[loop_id] = asyncio.Semaphore(self.concurrency)
            return self._semaphores[loop_id]

    async def _call(self, request: CompletionRequest) -> Completion:
        acomplete = getattr(self.provider, "acomplete", None)
        if acomplete is not None:
            return await acomplete(request)
        # A synchronous provider (the in-process llama.cpp model) runs on a worker thread.
        return await asyncio.to_thread(self.provider.complete, request)

    async def _gate(self, estimate: float, reservations: list[LimitReservation]) -> None:
        # The limiter paces the moment a request leaves: a slot is taken first, and a provider that
        # gates its sends calls this after its own setup, just before the bytes go out.
        reservation, delay = self.limiter.reserve(estimate)
        reservations.append(reservation)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _send(self, request: CompletionRequest) -> Completion:
        """Send with retries; at most ``1 + max_retries`` provider calls."""
        estimate = request.estimated_prompt_tokens() + request.max_tokens
        attempts = self.retry.max_retries + 1
        started = time.monotonic()
        for attempt in range(attempts):
            async with self._semaphore():
                self._count(requests=1, retries=1 if attempt else 0)
                reservations: list[LimitReservation] = []
                gate = functools.partial(self._gate, estimate, reservations)
                try:
                    if getattr(self.provider, "gates_sends", False):
                        token = SEND_GATE.set(gate)
                        try:
                            completion = await self._call(request)
                        finally:
                            SEND_GATE.reset(token)
                    else:
                        await gate()
                        completion = await self._call(request)
                except TransientError as exc:
                    error = exc
                    for reservation in reservations:
                        self.limiter.settle(reservation, 0)
                else:
                    used = completion.prompt_tokens + completion.completion_tokens
                    for reservation in reservations:
                        self.limiter.settle(reservation, used)
                        used = 0
                    return completion
            self._count(rate_limited=int(error.kind == "rate_limit"), server_errors=int(error.kind == "server"),
                        timeouts=int(error.kind == "timeout"))
            try:
                wait_s = self.retry.wait_before_retry(error, attempt + 1, self._rng)
            except Exception:
                self._count(failures=1)
                raise
            if attempt + 1 >= attempts:
                self._count(failures=1)
                raise RetriesExhausted(
                    f"gave up after {attempts} attempts in {time.monotonic() - started:.1f} s "
                    f"(max_retries={self.retry.max_retries}); last error: {error}", attempts=attempts,
                ) from None
            if error.kind == "rate_limit" and error.retry_after_s is not None:
                # The provider's limit is shared by every request of this teacher: all of them wait.
                self.limiter.pause(wait_s)
            log.info("teacher %s: %s; retry %d/%d in %.2f s", self.name, error, attempt + 1,
                     self.retry.max_retries, wait_s)
            self._count(backoff_s=wait_s)
            await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- structured outputs -----------------------------------------------------------------------

    def structured(self, messages: Iterable[ChatMessage], output: type[T], temperature: float = 0.0,
                   max_tokens: int | None = None, seed: int = 0, max_repairs: int = 1) -> tuple[T | None, str | None]:
        """Ask for JSON following ``output``'s schema; validate; re-ask up to ``max_repairs`` times.

        ``max_tokens=None`` sizes the request to the schema's worst case (:mod:`tasks.teacher.worst_case`),
        so a grammar-constrained answer is never cut off by its budget (:data:`DEFAULT_MAX_TOKENS` for a
        schema that does not bound its length); a number is the caller's cap, a recipe's for instance.

        Returns ``(value, None)`` or ``(None, reason)``: an output that never validates becomes a
        rejected record with its reason rather than an exception. Provider failures (quota, budget,
        retries exhausted, deferral) are raised.
        """
        return run_sync(self.astructured(messages, output, temperature, max_tokens, seed, max_repairs))

    async def astructured(self, messages: Iterable[ChatMessage], output: type[T], temperature: float = 0.0,
                          max_tokens: int | None = None, seed: int = 0,
                          max_repairs: int = 1) -> tuple[T | None, str | None]:
        history = list(messages)
        schema = output.model_json_schema()
        if max_tokens is None:
            max_tokens = worst_case_chars(grammar_safe(schema)) or DEFAULT_MAX_TOKENS
        reason = "no attempt"
        for attempt in range(max_repairs + 1):
            request = CompletionRequest(messages=tuple(history), temperature=temperature, max_tokens=max_tokens,
                                        seed=seed + attempt, json_schema=schema)
            completion = await self.acomplete(request)
            try:
                return output.model_validate_json(extract_json(completion.text)), None
            except (ValidationError, ValueError) as exc:
                reason = _short_validation_error(exc, completion)
            if attempt < max_repairs:
                self._count(repairs=1)
                history = [
                    *history,
                    ChatMessage(role="assistant", content=completion.text),
                    ChatMessage(role="user", content=f"That reply is invalid ({reason}). "
                                "Reply again with only a JSON object that follows the schema."),
                ]
        self._count(rejects=1)
        return None, reason

    # -- many items -------------------------------------------------------------------------------

    def map(self, fn: Callable[[Any], R], items: Sequence[Any], concurrency: int | None = None,
            progress: Callable[[int, int], None] | None = None, desc: str | None = None) -> list[R]:
        """Apply ``fn`` to every item, ``concurrency`` at a time (default: the teacher's; at most the
        provider's ``max_in_flight``), keeping order.

        ``fn`` runs in worker threads, each in a copy of the caller's context (Prefect's run context
        included), and calls the teacher's synchronous methods. ``progress(done, total)`` is called as
        items finish; without it the teacher shows its own bar (and a Prefect progress artifact inside
        a run).

        When the budget runs out, items not yet finished are skipped: the result holds the finished
        items in input order (shorter than ``items``), ``stats.budget_stopped`` is set and
        ``stats.stop_reason`` says why. Any other exception stops the map and is raised once the
        items already running are done (their responses are cached, so a rerun pays nothing for them).
        """
        total = len(items)
        workers = max(1, concurrency or self.concurrency)
        workers = min(workers, getattr(self.provider, "max_in_flight", None) or workers)
        bar = None if progress is not None else GenerationProgress(
            total, desc or f"teacher {self.name}", summary=lambda: self.stats.summary())
        results: dict[int, R] = {}
        stopped = False
        failure: BaseException | None = None
        done = 0
        context = contextvars.copy_context()
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher-map") as pool:
                running: dict[Future[R], int] = {}
                next_index = 0
                while next_index < total or running:
                    while not stopped and failure is None and next_index < total and len(running) < workers:
                        future = pool.submit(context.copy().run, fn, items[next_index])
                        running[future] = next_index
                        next_index += 1
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = running.pop(future)
                        try:
                            results[index] = future.result()
                        except BudgetExhausted:
                            stopped = True
                        except BaseException as exc:  # noqa: BLE001 - raised below, after in-flight items
                            failure = failure or exc
                        done += 1
                        if progress is not None:
                            progress(done, total)
                        elif bar is not None:
                            bar.advance()
        finally:
            if bar is not None:
                bar.close()
        if failure is not None:
            raise failure
        if stopped:
            self._count(skipped=total - len(results))
            log.warning("teacher %s stopped early: %s (%d of %d items done)", self.name,
                        self.stats.stop_reason, len(results), total)
        return [results[i] for i in sorted(results)]

    def close(self) -> None:
        close = getattr(self.provider, "close", None)
        if close is not None:
            close()
        if self.cache is not None:
            self.cache.close()


_TEACHERS: dict[str, Teacher] = {}
_TEACHERS_LOCK = threading.Lock()
_PROVIDERS: dict[str, ChatProvider] = {}


def _provider_key(config: TeacherConfig) -> str:
    data = config.model_dump(mode="json")
    fields = ("provider", "model", "base_url", "api_key_env", "n_ctx", "request_timeout_s", "structured_mode")
    return json.dumps({k: data.get(k) for k in fields}, sort_keys=True)


def build_provider(config: TeacherConfig) -> ChatProvider:
    """The provider a teacher config names (a new one each call)."""
    if config.provider == "llama_cpp":
        from tasks.core.models import resolve_gguf
        from tasks.teacher.llama_cpp import LlamaCppChat

        path = resolve_gguf(config.model)
        return LlamaCppChat(path, n_ctx=config.n_ctx, model=config.model)
    if config.provider == "openai":
        from tasks.teacher.openai_compat import OpenAIChat

        return OpenAIChat.from_config(config)
    raise ValueError(f"unknown teacher provider {config.provider!r}")


def shared_provider(config: TeacherConfig) -> ChatProvider:
    """One provider per endpoint and model per process: a local model is loaded once."""
    key = _provider_key(config)
    with _TEACHERS_LOCK:
        if key not in _PROVIDERS:
            _PROVIDERS[key] = build_provider(config)
        return _PROVIDERS[key]


def get_teacher(config: TeacherConfig) -> Teacher:
    """One teacher per config per process, with the durable cache under the state folder."""
    from tasks.core.settings import get_settings

    path = get_settings().cache_dir / "teacher.sqlite"
    key = json.dumps([config.model_dump(mode="json"), str(path)], sort_keys=True)  # a moved state folder: a new one
    with _TEACHERS_LOCK:
        teacher = _TEACHERS.get(key)
    if teacher is None:
        provider = shared_provider(config)
        with _TEACHERS_LOCK:
            if key not in _TEACHERS:
                _TEACHERS[key] = Teacher.from_config(config, provider=provider, cache=RequestCache(path))
            teacher = _TEACHERS[key]
    return teacher


def fresh_stats(teacher: Teacher) -> TeacherStats:
    """Reset and return a teacher's counters (each task reports only its own calls)."""
    with teacher._lock:
        teacher.stats = TeacherStats()
    return teacher.stats


def clear_teachers() -> None:
    """Close and forget every teacher and provider of this process (tests, long-lived workers)."""
    with _TEACHERS_LOCK:
        teachers, providers = list(_TEACHERS.values()), list(_PROVIDERS.values())
        _TEACHERS.clear()
        _PROVIDERS.clear()
    for teacher in teachers:
        if teacher.cache is not None:
            teacher.cache.close()
    for provider in providers:
        close = getattr(provider, "close", None)
        if close is not None:
            close()
