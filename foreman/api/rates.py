"""A tenant's limits at the door: submissions per minute (``TenantLimitsSet.rate``), a
sliding window; and how a submission over its queued jobs (``max_queued``) is told.

Each tenant's last ``rate`` submission times are kept (no more): one more within a
minute of the oldest is refused with the seconds until that one leaves the window.
Times are Trio's clock, so tests drive them with ``MockClock``. Kept in memory: a
restart forgives a minute's submissions, which the queue limits still bound.
"""

from __future__ import annotations

import math
from collections import deque

import trio

from foreman.actors import TenantQueueFull

WINDOW = 60.0
QUEUED_RETRY_AFTER = 5
"""Seconds a tenant at its ``max_queued`` is asked to wait: a job or more has run by then."""


def over_queue(full: TenantQueueFull) -> str:
    return (
        f"tenant {full.tenant} has {full.limit} jobs queued, its limit: try again when "
        "some have run"
    )


class SubmissionRates:
    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}

    def take(self, tenant: str, rate: int | None) -> int | None:
        """Count one submission of ``tenant``'s; None when within ``rate`` a minute,
        else the whole seconds to wait (and it is not counted)."""
        if rate is None:
            return None
        now = trio.current_time()
        times = self._times.setdefault(tenant, deque())
        while times and times[0] <= now - WINDOW:
            times.popleft()
        while len(times) > rate:  # the rate was lowered since
            times.popleft()
        if len(times) == rate:
            return max(1, math.ceil(times[0] + WINDOW - now))
        times.append(now)
        return None
