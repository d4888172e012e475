"""The dashboard's picture of the queue and the last hour, read from the jobs projection.

Cheap by construction: the queue is the queued and running jobs (``jobs_by_state``), the
hour the jobs finished within it (``jobs_finished``) and those running, so a read costs
the hour's jobs, not the log's. An hour's jobs pruned within it (FOREMAN_JOB_TTL under an
hour) are missing from its charts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from foreman.events.log import EventLog, format_timestamp, unix_time, wall_clock

MINUTES = 60


@dataclass(frozen=True, slots=True)
class QueueGroup:
    """How many jobs of one model, priority and tenant wait and run."""

    model: str
    priority: int
    tenant: str | None
    queued: int
    running: int


@dataclass(frozen=True, slots=True)
class RunningJob:
    id: str
    model: str
    backend: str | None
    started_at: str | None
    tenant: str | None


@dataclass(slots=True)
class Hour:
    """Per minute, oldest first, over the hour up to ``until`` (Unix seconds)."""

    until: float
    finished: list[int] = field(default_factory=lambda: [0] * MINUTES)
    """Jobs that ended (succeeded, failed, cancelled after starting) in the minute."""
    swaps: list[int] = field(default_factory=lambda: [0] * MINUTES)
    """Jobs started on a host whose job before, within the hour, was of another model."""
    busy: list[float] = field(default_factory=lambda: [0.0] * MINUTES)
    """Seconds of the minute the hosts spent running jobs, summed over the hosts."""


def queue_groups(log: EventLog, tenant: str | None) -> list[QueueGroup]:
    """The waiting and running jobs by model, priority and tenant (``tenant``'s only when
    given)."""
    only = " AND tenant = ?" if tenant is not None else ""
    rows = log.conn.execute(
        "SELECT model, priority, tenant, "
        "SUM(state = 'queued'), SUM(state = 'running') FROM jobs "
        f"WHERE state IN ('queued', 'running'){only} "
        "GROUP BY model, priority, tenant ORDER BY priority DESC, model, tenant",
        () if tenant is None else (tenant,),
    )
    return [QueueGroup(*row) for row in rows]


def running_jobs(log: EventLog) -> list[RunningJob]:
    rows = log.conn.execute(
        "SELECT id, model, backend, started_at, tenant FROM jobs WHERE state = 'running' "
        "ORDER BY id"
    )
    return [RunningJob(*row) for row in rows]


def last_hour(log: EventLog, tenant: str | None, now: float | None = None) -> Hour:
    """Throughput and busy time of ``tenant``'s jobs (everyone's when None), and the
    fleet's model swaps, per minute of the last hour."""
    until = wall_clock().timestamp() if now is None else now
    since = until - MINUTES * 60
    hour = Hour(until)
    rows = log.conn.execute(
        "SELECT model, backend, started_at, finished_at, tenant FROM jobs "
        "WHERE finished_at >= ? AND started_at IS NOT NULL "
        "UNION ALL SELECT model, backend, started_at, NULL, tenant FROM jobs "
        "WHERE state = 'running' AND started_at IS NOT NULL",
        (format_timestamp(datetime.fromtimestamp(since, UTC)),),
    ).fetchall()
    runs = sorted(
        (unix_time(started), None if ended is None else unix_time(ended), model, host, owner)
        for model, host, started, ended, owner in rows
    )
    last_model: dict[str | None, str] = {}
    for started, ended, model, host, owner in runs:
        before = last_model.get(host)
        last_model[host] = model
        if started >= since and before is not None and before != model:
            hour.swaps[_minute(started, since)] += 1
        if tenant is not None and owner != tenant:
            continue
        if ended is not None and ended >= since:
            hour.finished[_minute(ended, since)] += 1
        _add_busy(hour.busy, max(started, since), until if ended is None else ended, since)
    return hour


def _minute(moment: float, since: float) -> int:
    return min(MINUTES - 1, max(0, int((moment - since) // 60)))


def _add_busy(busy: list[float], start: float, end: float, since: float) -> None:
    """Spread the run from ``start`` to ``end`` over the minutes it covers."""
    while start < end:
        index = _minute(start, since)
        minute_end = since + (index + 1) * 60
        step = min(end, minute_end) - start
        busy[index] += step
        start += step
        if index == MINUTES - 1:
            break
