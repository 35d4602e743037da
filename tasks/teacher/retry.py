"""When to retry a failed teacher request and how long to wait: pure functions, tested exhaustively.

Policy: 429 (not quota), 5xx, timeouts, dropped connections and malformed envelopes are retried up to
``max_retries`` times, so one request costs at most ``1 + max_retries`` calls. A Retry-After from the
provider is obeyed when it is at most ``max_wait_s``; a longer one raises :class:`RateLimitDeferred`
at once so the stage can defer instead of holding a worker for an hour. Without Retry-After the wait
is exponential with "equal jitter" (half fixed, half random), so parallel clients spread out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.teacher.base import RateLimitDeferred, TransientError


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Attributes:
        max_retries: retries after the first attempt (a request costs at most ``1 + max_retries`` calls).
        backoff_base_s: the first backoff ceiling without Retry-After; it doubles each retry.
        backoff_max_s: the largest backoff ceiling.
        max_wait_s: the longest Retry-After obeyed; a longer one defers the stage.
    """

    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_wait_s: float = 60.0

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based) when the provider said nothing."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, retry_number - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def wait_before_retry(self, error: TransientError, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retrying after ``error``.

        Raises:
            RateLimitDeferred: the provider's Retry-After is longer than ``max_wait_s``.
        """
        if error.retry_after_s is not None:
            wait = max(0.0, error.retry_after_s)
            if wait > self.max_wait_s:
                raise RateLimitDeferred(
                    f"the provider asks to wait {wait:.0f} s before the next request (HTTP {error.status}), "
                    f"longer than max_wait_s={self.max_wait_s:.0f}: defer this stage and run it again later",
                    wait_s=wait,
                )
            # Never earlier than asked; a little later, spread out, so waiting clients do not return at once.
            return wait + rng.uniform(0, min(1.0, 0.1 * wait))
        return self.backoff(retry_number, rng)
