"""Read models for the job API: what ``GET /jobs`` and friends ask the log.

Each query takes the reader's :class:`~foreman.events.log.EventLog` (a
read-only connection, one read transaction per call, ADR-0027).
"""

from __future__ import annotations

from dataclasses import dataclass

from foreman.events.jobs import SELECT_JOBS, Job, JobState, job_from_row
from foreman.events.log import EventLog
from foreman.events.types import (
    JobSubmitted,
    JobSucceeded,
    RecordedEvent,
    UnreadableEvent,
    backend_stream,
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    job: Job
    succeeded: JobSucceeded | None
    """The success event (result and artifact refs), once the job succeeded."""


def job_record(log: EventLog, job_id: str) -> JobRecord | None:
    row = log.conn.execute(f"{SELECT_JOBS} WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    job = job_from_row(row)
    succeeded = None
    if job.result_seq is not None:
        (event,) = log.events_at([job.result_seq])
        succeeded = success(event)
    return JobRecord(job, succeeded)


def success(recorded: RecordedEvent) -> JobSucceeded | None:
    """A ``JobSucceeded``'s result and outputs; None when its data cannot be read back
    (the job's state stands: only its result is lost, ADR-0032)."""
    try:
        event = recorded.event
    except UnreadableEvent:
        return None
    assert isinstance(event, JobSucceeded)
    return event


def submission(log: EventLog, job_id: str) -> JobSubmitted:
    first = log.conn.execute(
        "SELECT seq FROM events WHERE stream = ? AND version = 1", (job_id,)
    ).fetchone()
    (event,) = log.events_at([first[0]])
    assert isinstance(event.event, JobSubmitted)
    return event.event


def submitted_job(log: EventLog, job_id: str) -> JobSubmitted | None:
    """What the job was submitted with, pruned or not; None when the log has no such
    job, or its submission cannot be read back."""
    first = log.conn.execute(
        "SELECT seq FROM events WHERE stream = ? AND version = 1", (job_id,)
    ).fetchone()
    if first is None:
        return None
    return submitted_as(log.events_at([first[0]])[0])


def submitted_as(first: RecordedEvent) -> JobSubmitted | None:
    """A job stream's first event as the submission it is, if it can be read back."""
    try:
        event = first.event
    except UnreadableEvent:
        return None
    return event if isinstance(event, JobSubmitted) else None


def job_by_idempotency_key(
    log: EventLog, key: str, tenant: str | None
) -> tuple[str, JobSubmitted] | None:
    """The job ``tenant``'s ``Idempotency-Key`` created, and what it was submitted with."""
    row = log.conn.execute(
        "SELECT id FROM jobs WHERE idempotency_key = ? AND tenant IS ?", (key, tenant)
    ).fetchone()
    return None if row is None else (row[0], submission(log, row[0]))


def unfinished_with_webhooks(log: EventLog) -> list[str]:
    """The queued and running jobs that have a ``state_webhook_url``: those whose next
    events owe notifications."""
    rows = log.conn.execute(
        "SELECT id FROM jobs WHERE state IN ('queued', 'running') AND state_webhook_url IS NOT NULL"
    )
    return [job_id for (job_id,) in rows]


def list_jobs(
    log: EventLog,
    *,
    state: JobState | None,
    model: str | None,
    kind: str | None,
    before: str | None,
    limit: int,
    tenant: str | None = None,
) -> list[Job]:
    """Newest first (ids are ULIDs: time order), older than ``before`` if given; only
    ``tenant``'s when given."""
    where: list[str] = []
    args: list[str] = []
    for column, value in (("state", state), ("model", model), ("kind", kind), ("tenant", tenant)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if before is not None:
        where.append("id < ?")
        args.append(before)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = log.conn.execute(f"{SELECT_JOBS}{clause} ORDER BY id DESC LIMIT ?", (*args, limit))
    return [job_from_row(row) for row in rows]


def drained_backends(log: EventLog, names: list[str]) -> set[str]:
    """The hosts among ``names`` whose last drain or resume was a drain: a drain for
    maintenance holds across a restart."""
    drained = set()
    for name in names:
        changes = [e.type for e in log.read_stream(backend_stream(name))]
        if changes and changes[-1] == "BackendDrained":
            drained.add(name)
    return drained
