"""Client-side limits: a requests/tokens-per-minute limiter and the per-run token and cost budget.

Both work by reservation. Before a request is sent the limiter takes one request and the request's
estimated tokens (prompt estimate + ``max_tokens``) from token buckets, and the budget reserves the
same estimate against its cap; when the response arrives both settle with the provider's real usage.
Reserving first is what keeps many requests in flight from overshooting either limit together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tasks.teacher.base import BudgetExhausted

Clock = Callable[[], float]


class TokenBucket:
    """A token bucket that may go into debt: ``reserve`` never blocks, it says how long to wait.

    Taking tokens at once (and waiting afterwards) keeps reservations in arrival order and lets a
    single request larger than the bucket through after a proportionally longer wait, instead of
    starving it.
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock = time.monotonic):
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, cost: float) -> float:
        """Take ``cost`` tokens now; return the seconds to wait before using them."""
        with self._lock:
            self._refill(self._clock())
            self._level -= cost
            return 0.0 if self._level >= 0 else -self._level / self.rate

    def give_back(self, amount: float) -> None:
        """Return (positive) or take more (negative) tokens once the real cost is known."""
        with self._lock:
            self._refill(self._clock())
            self._level = min(self.capacity, self._level + amount)


@dataclass
class LimitReservation:
    tokens: float = 0.0


class RateLimiter:
    """Requests per minute and tokens per minute, each a token bucket; either may be unset.

    ``burst_s`` sets how much may go out at once: the buckets hold ``burst_s`` seconds' worth. A 429
    with Retry-After pauses every request of this limiter (:meth:`pause`), not only the one refused.
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 burst_s: float = 1.0, clock: Clock = time.monotonic):
        self._clock = clock
        self.requests = None
        self.tokens = None
        if requests_per_minute:
            rate = requests_per_minute / 60.0
            self.requests = TokenBucket(rate, max(1.0, rate * burst_s), clock)
        if tokens_per_minute:
            rate = tokens_per_minute / 60.0
            self.tokens = TokenBucket(rate, max(1.0, rate * burst_s), clock)
        self._paused_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def reserve(self, estimated_tokens: float) -> tuple[LimitReservation, float]:
        """Reserve one request and ``estimated_tokens``; return the reservation and the wait in seconds."""
        wait = max(0.0, self._paused_until - self._clock())
        if self.requests is not None:
            wait = max(wait, self.requests.reserve(1))
        reservation = LimitReservation()
        if self.tokens is not None:
            wait = max(wait, self.tokens.reserve(estimated_tokens))
            reservation.tokens = estimated_tokens
        return reservation, wait

    def settle(self, reservation: LimitReservation, actual_tokens: float) -> None:
        """Correct the token bucket once the provider's usage is known (0 for a refused request)."""
        if self.tokens is not None and reservation.tokens:
            self.tokens.give_back(reservation.tokens - actual_tokens)
            reservation.tokens = 0.0


@dataclass(frozen=True)
class Prices:
    """Prices per 1,000 tokens, in the currency of ``max_cost`` (unset: cost is not tracked).

    ``cached_prompt_per_1k`` prices the prompt tokens a provider served from its prompt cache (OpenAI bills
    them at a discount); unset, they cost what other prompt tokens cost.
    """

    prompt_per_1k: float | None = None
    completion_per_1k: float | None = None
    cached_prompt_per_1k: float | None = None

    @property
    def known(self) -> bool:
        return self.prompt_per_1k is not None or self.completion_per_1k is not None

    def cost(self, prompt_tokens: float, completion_tokens: float, cached_prompt_tokens: float = 0) -> float:
        """The cost of a request; ``cached_prompt_tokens`` are part of ``prompt_tokens``."""
        prompt = self.prompt_per_1k or 0.0
        cached = prompt if self.cached_prompt_per_1k is None else self.cached_prompt_per_1k
        return ((prompt_tokens - cached_prompt_tokens) * prompt + cached_prompt_tokens * cached
                + completion_tokens * (self.completion_per_1k or 0.0)) / 1000


@dataclass
class BudgetReservation:
    tokens: int = 0
    cost: float = 0.0


class Budget:
    """A per-run cap on tokens and, where prices are set, on cost.

    A request is sent only if what is spent, plus what requests in flight have reserved, plus this
    request's worst case (prompt estimate + ``max_tokens``) stays within the caps; otherwise it raises
    :class:`BudgetExhausted`, and so does every later request (the stop is sticky, so a run ends at a
    clean point instead of picking small requests that still fit). Cached responses cost nothing.
    """

    def __init__(self, max_tokens: int | None = None, max_cost: float | None = None, prices: Prices = Prices()):
        if max_cost is not None and not prices.known:
            raise ValueError("a cost cap (max_cost) needs prices per token")
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.prices = prices
        self.spent_tokens = 0
        self.spent_cost = 0.0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self.stop_reason: str | None = None
        self._lock = threading.Lock()

    def reserve(self, prompt_estimate: int, max_completion: int) -> BudgetReservation:
        worst_tokens = prompt_estimate + max_completion
        worst_cost = self.prices.cost(prompt_estimate, max_completion)
        with self._lock:
            if self.stop_reason is None:
                if self.max_tokens is not None and (
                    self.spent_tokens + self._reserved_tokens + worst_tokens > self.max_tokens
                ):
                    self.stop_reason = (
                        f"token budget reached: {self.spent_tokens} of max_total_tokens={self.max_tokens} used, "
                        f"{self._reserved_tokens} reserved in flight, the next request may need {worst_tokens}"
                    )
                elif self.max_cost is not None and (
                    self.spent_cost + self._reserved_cost + worst_cost > self.max_cost
                ):
                    self.stop_reason = (
                        f"cost budget reached: {self.spent_cost:.4f} of max_cost={self.max_cost} spent, "
                        f"the next request may cost {worst_cost:.4f}"
                    )
            if self.stop_reason is not None:
                raise BudgetExhausted(self.stop_reason)
            self._reserved_tokens += worst_tokens
            self._reserved_cost += worst_cost
            return BudgetReservation(worst_tokens, worst_cost)

    def release(self, reservation: BudgetReservation) -> None:
        with self._lock:
            self._reserved_tokens -= reservation.tokens
            self._reserved_cost -= reservation.cost
            reservation.tokens, reservation.cost = 0, 0.0

    def settle(self, reservation: BudgetReservation, prompt_tokens: int, completion_tokens: int,
               cached_prompt_tokens: int = 0) -> float:
        """Book a completed request; return its cost (0 without prices). Tokens count whole, cached or not."""
        cost = self.prices.cost(prompt_tokens, completion_tokens, cached_prompt_tokens)
        self.release(reservation)
        with self._lock:
            self.spent_tokens += prompt_tokens + completion_tokens
            self.spent_cost += cost
        return cost
