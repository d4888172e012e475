"""When a failed delivery is tried again, and which failures are final.

Success is any 2xx. Connection errors, timeouts, 408, 429 and 5xx are worth
another try; every other answer (a redirect, which is never followed, or a 4xx)
is final. Retry ``n`` (1 for the try after the first) waits
``backoff * 2**(n-1)``, stretched by up to ``jitter`` of itself so that
receivers coming back up are not hit by every sender in step, and never less
than the receiver's ``Retry-After`` (itself capped: a receiver cannot park a
delivery for days).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime

RETRYABLE_STATUSES = frozenset({408, 429})
MAX_RETRY_AFTER = 3600.0
"""The longest ``Retry-After`` honoured, in seconds."""


def is_success(status: int) -> bool:
    return 200 <= status < 300


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff: float = 2.0
    """The wait before the first retry, doubling for each one after."""
    max_retries: int = 5
    """Tries after the first; then the delivery is abandoned."""
    jitter: float = 0.2
    """Each wait is stretched by a random fraction of itself, up to this."""

    def delay(self, retry: int, retry_after: float | None, random: float) -> float:
        """The wait before retry number ``retry`` (from 1), ``random`` in [0, 1)."""
        wait: float = self.backoff * 2 ** (retry - 1) * (1 + self.jitter * random)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
        return wait


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date), or
    None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not "²", which str.isdigit() also takes
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())
