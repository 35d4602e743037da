"""How long an HTTP response asks its client to wait: the one reading of it for every client here.

The collectors' HTTP and the teacher's API client both obey it, so both read the same headers the same
way: ``retry-after-ms`` (milliseconds, sent by OpenAI and some proxies) before ``retry-after``, which
may be seconds (``"5"``, ``"1.5"``) or an HTTP date (RFC 9110).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the response asks to wait; ``None`` when it does not say (the caller backs off instead).

    Header names are matched case-insensitively. A malformed value counts as absent, a date in the
    past as 0, and a date without a zone (``-0000``) as UTC. ``now`` (a Unix time) is for tests.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = (lowered.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
