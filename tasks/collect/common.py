"""Helpers every collector shares: the error a source raises, HTTP with retries, time and HTML.

The collectors talk to services outside our control, so the rules for transient failures live in one
place: HTTP 429 and 5xx are retried with exponential backoff (``Retry-After`` wins when the server
sends one), connection errors likewise, and anything else is a clear :class:`CollectError` that names
the source and the reason; a :class:`SourceConfigError` when the recipe itself is wrong, a
:class:`BadSourceFile` when a local file is malformed (neither is retried). Nothing here
logs a URL's query string with credentials in it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from tasks.core.retry_after import parse_retry_after

logger = logging.getLogger("distillery.collect")


class CollectError(RuntimeError):
    """One source could not be collected. The message names the source and the reason, never a secret."""


class SourceConfigError(CollectError):
    """The recipe's source entry is wrong (a missing path, a missing or bad option, an unknown table).

    A retry cannot fix it, so the collect task fails at once instead of retrying.
    """


class BadSourceFile(CollectError):
    """A local file the source names is not what its kind reads (malformed XML, JSON or YAML, not UTF-8).

    A retry would read the same bytes, so the collect task fails at once; the message names the file.
    """


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a request before giving up on the source.

    Attributes:
        attempts: Tries in all (the first one included).
        base_delay_s: Backoff before the second try; doubled each time, with jitter.
        max_delay_s: Cap on one backoff (a longer ``Retry-After`` is obeyed up to ``max_retry_after_s``).
        max_retry_after_s: A server asking to wait longer than this ends the source instead.
        timeout_s: Connect and read timeout of one request.
    """

    attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 600.0
    timeout_s: float = 60.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        """Build a policy from a source's ``options`` (``retry_attempts``, ``retry_base_delay_s``...)."""
        defaults = cls()
        return cls(
            attempts=int(options.get("retry_attempts", defaults.attempts)),
            base_delay_s=float(options.get("retry_base_delay_s", defaults.base_delay_s)),
            max_delay_s=float(options.get("retry_max_delay_s", defaults.max_delay_s)),
            max_retry_after_s=float(options.get("max_retry_after_s", defaults.max_retry_after_s)),
            timeout_s=float(options.get("timeout_s", defaults.timeout_s)),
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        delay = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        # Jitter keeps parallel workers from retrying in lockstep.
        return delay * (0.5 + random.random() / 2)


def get_with_retries(
    session: requests.Session,
    url: str,
    *,
    what: str,
    params: dict[str, Any] | None = None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stream: bool = False,
) -> requests.Response:
    """GET ``url``, retrying 429/5xx and connection errors; return the first other response.

    Args:
        session: The session to send with (its headers and adapters apply).
        url: Full URL without secrets (it appears in error messages).
        what: Short name of the source for messages, e.g. ``"stackexchange_api stats"``.
        params: Query parameters.
        policy: Retry policy; the default tries 5 times.
        sleep: Injected for tests.
        stream: Passed to requests (large downloads).

    Returns:
        The response; its status may be a 4xx other than 429, which the caller judges.

    Raises:
        CollectError: every try failed, or the server asked to wait longer than the policy allows.
    """
    policy = policy or RetryPolicy()
    last = "no attempt made"
    for attempt in range(1, policy.attempts + 1):
        try:
            response = session.get(url, params=params, timeout=policy.timeout_s, stream=stream)
        except (requests.ConnectionError, requests.Timeout) as exc:
            last = f"{type(exc).__name__}: {exc}"
            wait = policy.backoff(attempt)
        else:
            if response.status_code != 429 and response.status_code < 500:
                return response
            last = f"HTTP {response.status_code}"
            asked = parse_retry_after(response.headers)
            response.close()
            if asked is not None and asked > policy.max_retry_after_s:
                raise CollectError(
                    f"{what}: {last} with Retry-After {asked:.0f}s, longer than the allowed "
                    f"{policy.max_retry_after_s:.0f}s; try again later"
                )
            wait = asked if asked is not None else policy.backoff(attempt)
        if attempt < policy.attempts:
            logger.warning("%s: %s (try %d/%d), waiting %.2fs", what, last, attempt, policy.attempts, wait)
            sleep(wait)
    raise CollectError(f"{what}: gave up after {policy.attempts} tries: {last}")


def utc(value: datetime) -> datetime:
    """The same instant as an aware UTC datetime (naive values are taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_watermark(value: str | datetime | None) -> datetime | None:
    """Read a watermark (ISO 8601 text or datetime) as aware UTC; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc(value)
    try:
        return utc(datetime.fromisoformat(value))  # 3.11 reads a trailing "Z" too
    except ValueError as exc:
        raise CollectError(f"watermark {value!r} is not an ISO 8601 datetime") from exc


def from_epoch(seconds: float | None, millis: bool = False) -> datetime | None:
    """A Unix timestamp (seconds, or milliseconds with ``millis``) as aware UTC, or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(float(seconds) / (1000.0 if millis else 1.0), tz=UTC)


def newest(*values: datetime | None) -> datetime | None:
    """The latest of the given datetimes, ignoring None."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def html_to_markdown(html: str) -> str:
    """Convert an HTML body (Stack Exchange, OpenReview) to Markdown.

    ``<script>`` and ``<style>`` elements are dropped with their content: markdownify's ``strip`` keeps
    the inner text, which would put script source into training data.
    """
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(html or "", "html.parser")
    for element in soup(["script", "style"]):
        element.decompose()
    text = MarkdownConverter(heading_style="ATX", bullets="-", escape_misc=False).convert_soup(soup)
    # markdownify leaves runs of blank lines between blocks; two newlines are a paragraph break.
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return "\n".join(out)
